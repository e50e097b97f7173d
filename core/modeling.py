"""Turning resolved config sections into torch objects through the registered specs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import manager
from .data import DataMeta
from .errors import ConfigError
from .tasks import Standardize, Task


def _params(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "name"}


class TrainforgeModel(nn.Module):
    """``standardize -> (flatten) -> net -> (target scale)``: raw features in, task outputs out.

    - input: float32 ``(N, *meta.input_shape)``, raw (standardization is inside, fitted on train);
    - output: logits ``(N, K)`` for classification, predictions ``(N, T)`` in target units for regression.
    """

    def __init__(self, net: nn.Module, meta: DataMeta, flatten: bool) -> None:
        super().__init__()
        self.standardize = Standardize(meta.mean, meta.std)
        self.flatten = flatten
        self.net = net
        self.target_scale: Standardize | None = None
        if meta.task == "regression" and meta.target_mean is not None:
            self.target_scale = Standardize(meta.target_mean, meta.target_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x)
        if self.flatten:
            x = x.flatten(1)
        out = self.net(x)
        if self.target_scale is not None:  # the net predicts standardized targets
            out = out * self.target_scale.std + self.target_scale.mean
        return out


class InferenceModel(nn.Module):
    """The exported graph: the model followed by the task's output head (e.g. logits + probabilities)."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.task.head(self.model(x))


def check_compatible(model_section: dict[str, Any], meta: DataMeta) -> None:
    """Fail before training when the model cannot serve the data's task or input shape."""
    spec = manager.get("model", model_section["name"])
    if meta.task not in spec.tasks:
        fits = sorted(e.spec.name for e in manager.entries("model") if meta.task in e.spec.tasks)
        raise ConfigError(
            f"model {spec.name!r} does not support the {meta.task} task of dataset {meta.dataset!r} "
            f"(it supports {', '.join(sorted(spec.tasks))}); models for {meta.task}: {', '.join(fits)}"
        )
    if spec.input == "image" and len(meta.input_shape) != 3:
        fits = sorted(e.spec.name for e in manager.entries("model") if e.spec.input != "image")
        raise ConfigError(
            f"model {spec.name!r} needs (C, H, W) images but dataset {meta.dataset!r} gives samples of "
            f"shape {meta.input_shape}; models for vectors: {', '.join(fits)}"
        )


def build_model(model_section: dict[str, Any], meta: DataMeta) -> TrainforgeModel:
    """Build the registered model for ``meta`` (images are flattened for ``input="vector"`` models)."""
    check_compatible(model_section, meta)
    spec = manager.get("model", model_section["name"])
    flatten = spec.input == "vector" and len(meta.input_shape) > 1
    input_shape = (math.prod(meta.input_shape),) if flatten else tuple(meta.input_shape)
    try:
        net = spec.build(input_shape=input_shape, output_dim=meta.output_dim, **_params(model_section))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {spec.name!r} could not be built with {_params(model_section)}: {exc}") from exc
    return TrainforgeModel(net, meta, flatten)


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
