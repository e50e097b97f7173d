"""Turning resolved config sections into torch objects through the registered specs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from trainforge import manager
from trainforge.contracts import DataMeta, Task
from trainforge.errors import ConfigError
from trainforge.training.tasks import Standardize


def _params(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


class TrainforgeModel(nn.Module):
    """``standardize -> (flatten | reshape) -> net -> (reshape) -> (target scale)``: raw features in, task outputs out.

    - input: float32 ``(N, *meta.input_shape)``, raw (standardization is inside, fitted on train);
    - output: logits ``(N, K)`` for classification, predictions ``(N, T)`` in target units for regression
      and forecasting, ``(N, *input_shape)`` in input units for reconstruction and generation.
    - ``net_input_shape``: per-sample shape the net receives instead (e.g. ``(T, F)`` for sequence models);
      ``output_shape``: per-sample shape the net's output is reshaped to (``input_shape`` when the target
      is the input itself).

    A net that defines ``example_input(n)`` is a generator: ``forward`` feeds it that code (e.g. a latent
    ``(N, Z)``) instead of a data row. A net that defines ``training_step`` / ``validation_step`` owns its
    step; see ``docs/plugins.md``.
    """

    def __init__(self, net: nn.Module, meta: DataMeta, flatten: bool,
                 net_input_shape: tuple[int, ...] | None = None,
                 output_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.standardize = Standardize(meta.mean, meta.std)
        self.flatten = flatten
        self.net_input_shape = tuple(int(d) for d in net_input_shape) if net_input_shape else None
        self.output_shape = tuple(int(d) for d in output_shape) if output_shape else None
        self.net = net
        self.target_scale: Standardize | None = None
        if meta.target_mean is not None:  # regression, forecasting; input statistics for reconstruction
            self.target_scale = Standardize(meta.target_mean, meta.target_std)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A raw batch as the net consumes it: standardized, then flattened or reshaped."""
        x = self.standardize(x)
        if self.flatten:
            return x.flatten(1)
        if self.net_input_shape is not None:
            return x.reshape(x.shape[0], *self.net_input_shape)
        return x

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The net's output in task units: reshaped, and de-standardized when the targets were scaled."""
        if self.output_shape is not None:
            out = out.reshape(out.shape[0], *self.output_shape)
        if self.target_scale is not None:  # the net predicts standardized targets
            out = out * self.target_scale.std + self.target_scale.mean
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generative:  # a generator maps a code (e.g. a latent vector), not a data row
            return self.finish(self.net(x))
        return self.finish(self.net(self.prepare(x)))

    # -- optional parts of the contract, present when the net defines them ------------------------
    @property
    def generative(self) -> bool:
        return callable(getattr(self.net, "example_input", None))

    @property
    def has_custom_step(self) -> bool:
        return callable(getattr(self.net, "training_step", None))

    def example_input(self, n: int) -> torch.Tensor:
        """A deterministic input batch of ``n`` rows for a generator (its exported graph's input)."""
        return self.net.example_input(n)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], optimizers: list[Any]) -> dict[str, Any]:
        x, y = batch
        return self.net.training_step((self.prepare(x), y), optimizers)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        x, y = batch
        return self.net.validation_step((self.prepare(x), y))

    def configure_optimizers(self, build: Any) -> list[Any]:
        """The net's optimizers (``net.configure_optimizers(build)``) or one over all parameters."""
        configure = getattr(self.net, "configure_optimizers", None)
        return list(configure(build)) if callable(configure) else [build(self.parameters())]

    def export_parts(self) -> dict[str, tuple[nn.Module, str]]:
        """``{part: (module, output name)}`` the net can export alone (e.g. an autoencoder's encoder)."""
        parts = getattr(self.net, "export_parts", None)
        return dict(parts()) if callable(parts) else {}


class PartModel(nn.Module):
    """One part of a model as a graph: raw input -> ``prepare`` -> part -> ``(output,)``."""

    def __init__(self, model: TrainforgeModel, part: nn.Module) -> None:
        super().__init__()
        self.model, self.part = model, part

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.part(self.model.prepare(x)),)


class InferenceModel(nn.Module):
    """The exported graph: the model followed by the task's output head (e.g. logits + probabilities)."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.task.head(self.model(x))


def _names(plugin_type: str, keep: Any) -> str:
    return ", ".join(sorted(e.name for e in manager.entries(plugin_type) if keep(e.spec))) or "(none)"


def choose_task(model_name: str, dataset_name: str) -> str | None:
    """The task a model/dataset pair runs, from the specs alone (before any data is loaded).

    The one task both declare, or ``None`` when several are shared (the data's own task decides, e.g.
    csv with mlp). Raises :class:`ConfigError` naming compatible models and datasets when none is shared.
    """
    model, dataset = manager.get("model", model_name), manager.get("dataset", dataset_name)
    common = model.tasks & dataset.tasks
    if len(common) == 1:
        return next(iter(common))
    if not common:
        raise ConfigError(
            f"model {model.name!r} ({', '.join(sorted(model.tasks))}) and dataset {dataset.name!r} "
            f"({', '.join(sorted(dataset.tasks))}) share no task; models for this dataset: "
            f"{_names('model', lambda s: s.tasks & dataset.tasks)}; datasets for this model: "
            f"{_names('dataset', lambda s: s.tasks & model.tasks)}"
        )
    return None


def check_compatible(model_section: dict[str, Any], meta: DataMeta) -> None:
    """Fail before training when the model cannot serve the data's task or input shape."""
    spec = manager.get("model", model_section["name"])
    if meta.task not in spec.tasks:
        raise ConfigError(
            f"model {spec.name!r} does not support the {meta.task} task of dataset {meta.dataset!r} "
            f"(it supports {', '.join(sorted(spec.tasks))}); models for {meta.task}: "
            f"{_names('model', lambda s: meta.task in s.tasks)}; datasets for {spec.name!r}: "
            f"{_names('dataset', lambda s: s.tasks & spec.tasks)}"
        )
    if spec.input == "image" and len(meta.input_shape) != 3:
        raise ConfigError(
            f"model {spec.name!r} needs (C, H, W) images but dataset {meta.dataset!r} gives samples of "
            f"shape {meta.input_shape}; models for vectors: {_names('model', lambda s: s.input != 'image')}"
        )
    if spec.input == "sequence" and len(meta.input_shape) not in (1, 2, 3):
        raise ConfigError(f"model {spec.name!r} needs (T, F) sequences, got samples of shape {meta.input_shape}")


def sequence_shape(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(T, F)`` a sequence model sees: ``(D,)`` -> ``(D, 1)``, ``(C, H, W)`` -> ``(H, C*W)`` (rows as steps)."""
    if len(input_shape) == 1:
        return int(input_shape[0]), 1
    if len(input_shape) == 3:
        c, h, w = input_shape
        return int(h), int(c * w)
    return int(input_shape[0]), int(input_shape[1])


def build_model(model_section: dict[str, Any], meta: DataMeta) -> TrainforgeModel:
    """Build the registered model for ``meta`` (images are flattened for ``input="vector"`` models).

    Raises :class:`ConfigError` for incompatible choices, bad hyperparameters, or an estimator spec
    (``fit="estimator"``: see :mod:`trainforge.estimators`).
    """
    check_compatible(model_section, meta)
    spec = manager.get("model", model_section["name"])
    if spec.fit == "estimator":
        raise ConfigError(f"model {spec.name!r} is a scikit-learn estimator, not a torch module")
    flatten = spec.input == "vector" and len(meta.input_shape) > 1
    net_input_shape = sequence_shape(tuple(meta.input_shape)) if spec.input == "sequence" else None
    if flatten:
        input_shape: tuple[int, ...] = (math.prod(meta.input_shape),)
    else:
        input_shape = net_input_shape or tuple(meta.input_shape)
    if tuple(input_shape) == tuple(meta.input_shape):
        net_input_shape = None
    target = manager.get("task", meta.task).target
    output_shape = tuple(meta.input_shape) if target in ("input", "none") else None
    try:
        net = spec.build(input_shape=input_shape, output_dim=meta.output_dim, **_params(model_section))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {spec.name!r} could not be built with {_params(model_section)}: {exc}") from exc
    model = TrainforgeModel(net, meta, flatten, net_input_shape, output_shape)
    if meta.task in ("classification", "regression") and not getattr(net, "has_custom_step", False):
        check_output_shape(model, meta, spec.name)
    return model


def preflight(model_section: dict[str, Any], meta: DataMeta) -> None:
    """Build the model once and check its output shape (:func:`check_output_shape`) with torch's RNG state
    restored afterwards, so a run can fail on a bad model before it is opened without changing the
    initial weights it then trains. A no-op for models not trained by the epoch loop."""
    if manager.get("model", model_section["name"]).fit != "epochs":
        return
    with torch.random.fork_rng(devices=[]):
        build_model(model_section, meta)


def check_output_shape(model: nn.Module, meta: DataMeta, name: str) -> None:
    """Run two zero rows through ``model`` (eval mode, no gradients) and check the output is ``(N, C)``:
    C classes for classification, C targets for regression. Raises :class:`ConfigError` with one line,
    e.g. ``model 'x' returned (N, 1) for classification with 2 classes; expected (N, 2)``, before any
    training (where a wrong shape otherwise surfaces as a torch error deep inside the loss)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *meta.input_shape))
    except Exception as exc:  # noqa: BLE001 - the model's own error, in one line
        raise ConfigError(f"model {name!r} failed on an input of shape (N, {', '.join(map(str, meta.input_shape))}): "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)
    expected = (2, int(meta.output_dim))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = f"({', '.join(['N', *map(str, out.shape[1:])])})" if isinstance(out, torch.Tensor) else type(out).__name__
        what = f"{meta.output_dim} classes" if meta.task == "classification" else f"{meta.output_dim} targets"
        raise ConfigError(f"model {name!r} returned {got} for {meta.task} with {what}; expected (N, {meta.output_dim})")


def build_optimizer(section: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    spec = manager.get("optimizer", section["name"])
    try:
        return spec.build(params, **_params(section))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer {spec.name!r} rejected {_params(section)}: {exc}") from exc


def build_scheduler(
    section: dict[str, Any], optimizer: torch.optim.Optimizer, epochs: int, mode: str = "min"
) -> tuple[Any, bool]:
    """Return ``(scheduler or None, needs_metric)``.

    Schedulers that step on the monitored metric (``needs_metric``) also get ``mode`` (``"min"`` or
    ``"max"``, the direction in which the monitored metric improves).
    """
    spec = manager.get("scheduler", section["name"])
    extra = {"mode": mode} if spec.needs_metric else {}
    try:
        scheduler = spec.build(optimizer, epochs=epochs, **extra, **_params(section))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scheduler {spec.name!r} rejected {_params(section)}: {exc}") from exc
    return scheduler, spec.needs_metric


def check_optimizer(config: dict[str, Any]) -> None:
    """Build the resolved config's optimizer and scheduler over one dummy parameter, so that torch's own
    checks (e.g. ``Invalid momentum value: -1``) refuse a value before a run is opened, as the trainer's
    values are. Raises :class:`ConfigError` (one line, from :func:`build_optimizer` / :func:`build_scheduler`)."""
    optimizer = build_optimizer(config["optimizer"], [nn.Parameter(torch.zeros(1))])
    build_scheduler(config["scheduler"], optimizer, int(config["trainer"]["epochs"]))
