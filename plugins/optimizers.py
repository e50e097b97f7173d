"""Built-in optimizers, thin wrappers over ``torch.optim`` with documented defaults."""

from __future__ import annotations

import trainforge


def _torch_optim(cls_name: str):
    def build(params, **hparams):
        import torch

        if "betas" in hparams:
            hparams["betas"] = tuple(hparams["betas"])
        return getattr(torch.optim, cls_name)(params, **hparams)

    build.__doc__ = f"``torch.optim.{cls_name}(params, **hparams)``"
    return build


def _log_lr(low: float, high: float):
    def space(trial):
        return {"lr": trial.suggest_float("lr", low, high, log=True)}

    return space


def sgd_space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-3, 0.3, log=True),
        "momentum": trial.suggest_float("momentum", 0.0, 0.99),
        "nesterov": trial.suggest_categorical("nesterov", [False, True]),
    }


def adam_space(trial):
    return {
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),  # below 3e-4 50 epochs rarely converge
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    }


OPTIMIZERS = [
    # name, torch class, description, defaults (source), search space
    ("sgd", "SGD", "Stochastic gradient descent with momentum (Sutskever et al. 2013; nesterov optional)",
     {"lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}, sgd_space),
    ("adam", "Adam", "Adam (Kingma & Ba 2015); defaults from the paper",
     {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}, adam_space),
    ("adamw", "AdamW", "Adam with decoupled weight decay (Loshchilov & Hutter 2019); torch defaults",
     {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}, adam_space),
    ("adadelta", "Adadelta", "Adadelta (Zeiler 2012); lr=1.0 and rho=0.9 as in torch",
     {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0}, _log_lr(0.05, 2.0)),
    ("rmsprop", "RMSprop", "RMSprop (Hinton, Coursera lecture 6e); lr=0.001 as in Keras, alpha=0.99 as in torch",
     {"lr": 0.001, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0}, _log_lr(1e-4, 1e-2)),
]


@trainforge.hookimpl
def register_optimizers(register):
    for name, cls_name, description, defaults, space in OPTIMIZERS:
        register(trainforge.OptimizerSpec(
            name=name, description=description, build=_torch_optim(cls_name), defaults=defaults,
            search_space=space,
            param_help={"lr": "learning rate", "weight_decay": "L2 penalty added to the gradient"},
        ))
