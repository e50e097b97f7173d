"""Tasks carry the semantics: loss, metrics, predictions and what the ONNX graph outputs.

Metrics are computed on device from accumulated statistics (a confusion matrix for classification,
sums of errors for regression), so an epoch costs no per-step host sync. The formulas match
scikit-learn's ``accuracy_score``, ``precision_recall_fscore_support(average="macro", zero_division=0)``,
``mean_squared_error``, ``mean_absolute_error`` and ``r2_score`` (checked in ``tests/test_tasks.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from trainforge.contracts import Task


class DeviceConstant:
    """A constant tensor of a task (e.g. a standard deviation) and its copy on the device last asked for.

    The loss runs every step; copying the constant from host memory each time would wait for the device
    (a host-to-device copy from pageable memory synchronizes). One copy per device instead.
    """

    def __init__(self, value: torch.Tensor | None) -> None:
        self.value = value
        self._copy = value

    def on(self, device: torch.device) -> torch.Tensor:
        if self._copy.device != device:
            self._copy = self.value.to(device)
        return self._copy


class Classification(Task):
    """Single-label classification: the model returns logits ``(N, K)``; targets are int64 ``(N,)``.

    Loss: cross-entropy on logits (``torch.nn.functional.cross_entropy``). ONNX outputs: ``logits``
    ``(N, K)`` float32 and ``probabilities`` ``(N, K)`` float32 (softmax).
    """

    name = "classification"
    onnx_outputs = ("logits", "probabilities")
    maximize = frozenset({"accuracy", "precision", "recall", "f1"})
    main_metric = "accuracy"

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), target)

    #: batches buffered before they are folded into the confusion matrix
    FOLD_EVERY = 64

    def new_state(self, output_dim: int, device: torch.device) -> dict[str, Any]:
        return {
            "confusion": torch.zeros(output_dim * output_dim, dtype=torch.long, device=device),
            "loss_sum": torch.zeros((), dtype=torch.float64, device=device),
            "count": torch.zeros((), dtype=torch.long, device=device),
            "pending": [],  # (target, prediction, batch-mean loss) per batch, not yet folded
        }

    def update(
        self, state: dict[str, Any], outputs: torch.Tensor, target: torch.Tensor, loss: Any = None,
        inputs: torch.Tensor | None = None,
    ) -> None:
        # Per step only the argmax runs; every FOLD_EVERY batches (and in compute) one bincount and one
        # weighted sum fold them in. Half a dozen small kernels per step were ~4% of a small MLP's fit.
        if loss is None:
            loss = F.cross_entropy(outputs.float(), target)
        loss = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss), device=target.device)
        state["pending"].append((target, outputs.argmax(dim=1), loss))
        if len(state["pending"]) >= self.FOLD_EVERY:
            self.fold(state)

    def fold(self, state: dict[str, Any]) -> None:
        """Fold the buffered batches into the confusion matrix and loss sum (also before a DDP all-reduce,
        so DDP keeps the per-step cost of one process: a bincount syncs with a CUDA device)."""
        pending = state["pending"]
        if not pending:
            return
        k = int(state["confusion"].numel() ** 0.5)
        if len(pending) == 1:  # e.g. a validation split in one batch: no concatenation
            (target, pred, loss), n = pending[0], pending[0][0].numel()
            state["loss_sum"].add_(loss, alpha=n)
        else:
            target = torch.cat([p[0] for p in pending])
            pred = torch.cat([p[1] for p in pending])
            n = target.numel()
            sizes = torch.tensor([p[0].numel() for p in pending], dtype=torch.float64).to(target.device)
            state["loss_sum"] += torch.dot(torch.stack([p[2] for p in pending]).double(), sizes)
        state["confusion"] += torch.bincount(torch.add(pred, target, alpha=k), minlength=k * k)
        state["count"] += n
        pending.clear()

    def compute(self, state: dict[str, Any]) -> dict[str, float]:
        self.fold(state)
        k = int(state["confusion"].numel() ** 0.5)
        # One host copy of the K*K counts; the arithmetic on them runs in numpy (float64, as before),
        # about ten times cheaper than the same dozen tiny torch ops, twice per epoch.
        cm = state["confusion"].view(k, k).cpu().numpy().astype(np.float64)  # rows: true, columns: predicted
        tp = np.diag(cm)
        predicted, actual = cm.sum(0), cm.sum(1)
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(actual > 0, tp / np.maximum(actual, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.maximum(denom, 1e-12), 0.0)
        # sklearn's macro average runs over the labels present in y_true or y_pred
        present = (predicted + actual) > 0
        n = float(cm.sum())
        return {
            "loss": float(state["loss_sum"]) / max(n, 1.0),
            "accuracy": float(tp.sum()) / max(n, 1.0),
            "precision": float(precision[present].mean()) if present.any() else float("nan"),
            "recall": float(recall[present].mean()) if present.any() else float("nan"),
            "f1": float(f1[present].mean()) if present.any() else float("nan"),
        }

    def head(self, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return outputs, torch.softmax(outputs, dim=1)

    def plots(self, folder: Path, x: np.ndarray, y: np.ndarray, outputs: np.ndarray, meta: Any) -> list[Path]:
        from trainforge import plots

        return [plots.confusion_matrix(y, outputs.argmax(1), meta.class_names, folder / "confusion_matrix.png")]

    def state_plots(self, folder: Path, state: dict[str, Any] | None, meta: Any) -> list[Path] | None:
        """The confusion matrix from the test split's counts (the same picture as :meth:`plots` draws from
        its rows, with no row kept: a streamed split stays in bounded memory)."""
        if not state or "confusion" not in state:
            return None
        from trainforge import plots

        self.fold(state)
        k = int(state["confusion"].numel() ** 0.5)
        counts = state["confusion"].view(k, k).cpu().numpy()
        return [plots.confusion_matrix_counts(counts, meta.class_names or [str(i) for i in range(k)],
                                              folder / "confusion_matrix.png")]


class Regression(Task):
    """Regression: the model returns ``(N, T)`` float predictions; targets are float32 ``(N, T)``.

    Loss: mean squared error. ONNX output: ``prediction`` ``(N, T)`` float32. R² is the uniform average
    over targets of ``1 - SS_res / SS_tot`` (scikit-learn's ``r2_score`` default).
    """

    name = "regression"
    onnx_outputs = ("prediction",)
    maximize = frozenset({"r2"})
    main_metric = "r2"

    def __init__(self, target_std: Any = None) -> None:
        self.target_std = None if target_std is None else torch.as_tensor(target_std, dtype=torch.float32)
        self._scale = DeviceConstant(self.target_std)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE measured in units of the training targets' standard deviation.

        Dividing by the target std makes the loss scale-free, so the same learning rate works for a
        target in [0, 1] and one in [25, 346] (diabetes); the reported metrics stay in target units.
        """
        err = outputs.float() - target
        if self.target_std is not None:
            err = err / self._scale.on(err.device)
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
        self, state: dict[str, torch.Tensor], outputs: torch.Tensor, target: torch.Tensor, loss: Any = None,
        inputs: torch.Tensor | None = None,
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

    def plots(self, folder: Path, x: np.ndarray, y: np.ndarray, outputs: np.ndarray, meta: Any) -> list[Path]:
        from trainforge import plots

        return [plots.predicted_vs_actual(y, outputs, folder / "predicted_vs_actual.png")]


def get_task(name: str, target_std: Any = None, meta: Any = None) -> Task:
    """The task object for ``name``, built by its registered :class:`~trainforge.TaskSpec`.

    ``meta`` (the run's :class:`~trainforge.contracts.DataMeta`) is what the spec's ``build`` receives; callers
    without one may pass ``target_std`` (it scales the regression loss, see ``Regression.loss``).
    Raises :class:`ConfigError` for an unknown task, listing the registered ones.
    """
    from types import SimpleNamespace

    from trainforge import manager
    from trainforge.errors import ConfigError, PluginError

    try:
        spec = manager.get("task", name)
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    if meta is None:
        meta = SimpleNamespace(task=name, target_std=target_std, target_mean=None, input_shape=None,
                               output_dim=None, class_names=None, mean=None, std=None)
    return spec.build(meta)


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
