"""Optimizer plugin: ``example-lion``, Lion (Chen et al. 2023, arXiv:2302.06675, Algorithm 2)."""

from __future__ import annotations

import trainforge


def build_lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
    """Lion: ``update = sign(beta1 * m + (1 - beta1) * g)``; ``p -= lr * (update + wd * p)``;
    ``m = beta2 * m + (1 - beta2) * g``. Defaults from the paper (lr is 3-10x smaller than AdamW's)."""
    import torch

    class Lion(torch.optim.Optimizer):
        def __init__(self, params, lr, betas, weight_decay):
            if lr <= 0:
                raise ValueError(f"lr must be positive, got {lr}")
            super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["exp_avg"] = torch.zeros_like(p)
                    m = state["exp_avg"]
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(torch.sign(m * beta1 + p.grad * (1 - beta1)), alpha=-group["lr"])
                    m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
            return loss

    return Lion(params, float(lr), betas, float(weight_decay))


@trainforge.hookimpl
def register_optimizers(register):
    register(trainforge.OptimizerSpec(
        name="example-lion",
        description="Lion: sign of an interpolated momentum (Chen et al. 2023)",
        build=build_lion,
        defaults={"lr": 1e-4, "betas": [0.9, 0.99], "weight_decay": 0.0},
        param_help={"lr": "learning rate (3-10x smaller than AdamW's)", "betas": "interpolation and momentum",
                    "weight_decay": "decoupled weight decay"},
        search_space=lambda trial: {"lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True)},
    ))
