"""Tasks carry the semantics: loss, metrics, predictions and what the ONNX graph outputs.

Metrics are computed on device from accumulated statistics (a confusion matrix for classification,
sums of errors for regression), so an epoch costs no per-step host sync. The formulas match
scikit-learn's ``accuracy_score``, ``precision_recall_fscore_support(average="macro", zero_division=0)``,
``mean_squared_error``, ``mean_absolute_error`` and ``r2_score`` (checked in ``tests/test_tasks.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


class Task:
    name = ""
    #: names of the ONNX graph outputs, in order
    onnx_outputs: tuple[str, ...] = ()
    #: metrics where larger is better (everything else is minimized)
    maximize: frozenset[str] = frozenset()

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def new_state(self, output_dim: int, device: torch.device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(
        self, state: dict[str, torch.Tensor], outputs: torch.Tensor, target: torch.Tensor, loss: Any = None
    ) -> None:
        """Accumulate a batch; ``loss`` (the batch-mean loss, already computed) saves recomputing it."""
        raise NotImplementedError

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def head(self, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Map raw model outputs to the ONNX graph outputs named in ``onnx_outputs``."""
        raise NotImplementedError


class Classification(Task):
    """Single-label classification: the model returns logits ``(N, K)``; targets are int64 ``(N,)``.

    Loss: cross-entropy on logits (``torch.nn.functional.cross_entropy``). ONNX outputs: ``logits``
    ``(N, K)`` float32 and ``probabilities`` ``(N, K)`` float32 (softmax).
    """

    name = "classification"
    onnx_outputs = ("logits", "probabilities")
    maximize = frozenset({"accuracy", "precision", "recall", "f1"})

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), target)

    def new_state(self, output_dim: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "confusion": torch.zeros(output_dim * output_dim, dtype=torch.long, device=device),
            "loss_sum": torch.zeros((), dtype=torch.float64, device=device),
            "count": torch.zeros((), dtype=torch.long, device=device),
        }

    def update(
        self, state: dict[str, torch.Tensor], outputs: torch.Tensor, target: torch.Tensor, loss: Any = None
    ) -> None:
        k = int(state["confusion"].numel() ** 0.5)
        pred = outputs.argmax(dim=1)
        state["confusion"] += torch.bincount(target * k + pred, minlength=k * k)
        if loss is None:
            loss = F.cross_entropy(outputs.float(), target)
        state["loss_sum"] += loss.double() * target.numel()
        state["count"] += target.numel()

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        k = int(state["confusion"].numel() ** 0.5)
        cm = state["confusion"].view(k, k).double().cpu()  # rows: true class, columns: predicted
        tp = cm.diag()
        predicted, actual = cm.sum(0), cm.sum(1)
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
        recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
        denom = precision + recall
        f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
        # sklearn's macro average runs over the labels present in y_true or y_pred
        present = (predicted + actual) > 0
        n = float(cm.sum())
        return {
            "loss": float(state["loss_sum"]) / max(n, 1.0),
            "accuracy": float(tp.sum()) / max(n, 1.0),
            "precision": float(precision[present].mean()),
            "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
        }

    def head(self, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return outputs, torch.softmax(outputs, dim=1)


class Regression(Task):
    """Regression: the model returns ``(N, T)`` float predictions; targets are float32 ``(N, T)``.

    Loss: mean squared error. ONNX output: ``prediction`` ``(N, T)`` float32. R² is the uniform average
    over targets of ``1 - SS_res / SS_tot`` (scikit-learn's ``r2_score`` default).
    """

    name = "regression"
    onnx_outputs = ("prediction",)
    maximize = frozenset({"r2"})

    def __init__(self, target_std: Any = None) -> None:
        self.target_std = None if target_std is None else torch.as_tensor(target_std, dtype=torch.float32)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE measured in units of the training targets' standard deviation.

        Dividing by the target std makes the loss scale-free, so the same learning rate works for a
        target in [0, 1] and one in [25, 346] (diabetes); the reported metrics stay in target units.
        """
        err = outputs.float() - target
        if self.target_std is not None:
            err = err / self.target_std.to(err.device)
        return err.pow(2).mean()

    def new_state(self, output_dim: int, device: torch.device) -> dict[str, torch.Tensor]:
        z = lambda: torch.zeros(output_dim, dtype=torch.float64, device=device)  # noqa: E731
        return {
            "se": z(),
            "ae": z(),
            "sum": z(),
            "sumsq": z(),
            "loss_sum": torch.zeros((), dtype=torch.float64, device=device),
            "count": torch.zeros((), dtype=torch.float64, device=device),
        }

    def update(
        self, state: dict[str, torch.Tensor], outputs: torch.Tensor, target: torch.Tensor, loss: Any = None
    ) -> None:
        out, tgt = outputs.detach().double(), target.double()
        state["se"] += ((out - tgt) ** 2).sum(0)
        state["ae"] += (out - tgt).abs().sum(0)
        state["sum"] += tgt.sum(0)
        state["sumsq"] += (tgt**2).sum(0)
        if loss is None:
            loss = self.loss(outputs, target)
        state["loss_sum"] += loss.detach().double() * tgt.shape[0]
        state["count"] += tgt.shape[0]

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(float(state["count"]), 1.0)
        se, ae = state["se"].cpu(), state["ae"].cpu()
        ss_tot = state["sumsq"].cpu() - state["sum"].cpu() ** 2 / n
        r2 = torch.where(ss_tot > 0, 1 - se / ss_tot.clamp(min=1e-12), torch.zeros_like(se))
        mse = float(se.mean()) / n
        return {"loss": float(state["loss_sum"]) / n, "mse": mse, "mae": float(ae.mean()) / n, "r2": float(r2.mean())}

    def head(self, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (outputs,)


TASKS: dict[str, type[Task]] = {"classification": Classification, "regression": Regression}


def get_task(name: str, target_std: Any = None) -> Task:
    """The task object for ``name``; ``target_std`` scales the regression loss (see ``Regression.loss``)."""
    from .errors import ConfigError

    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return Regression(target_std) if name == "regression" else TASKS[name]()


def metric_mode(metric: str, task: Task) -> str:
    """``"max"`` if larger is better for ``metric`` (e.g. ``val_accuracy``), else ``"min"``."""
    return "max" if metric.split("_", 1)[-1] in task.maximize else "min"


class Standardize(nn.Module):
    """``(x - mean) / std`` with statistics fitted on the training split, stored as buffers.

    Part of the model, so the exported ONNX graph takes raw features and the predictor needs no
    preprocessing code.
    """

    def __init__(self, mean: Any, std: Any) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
