"""The task classes of forecasting, reconstruction and generation (imported only when a run needs them).

Metrics accumulate on the device and sync once per epoch, as in :mod:`trainforge.training.tasks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainforge import ConfigError
from trainforge.contracts import Task
from trainforge.training.tasks import DeviceConstant, Regression


class Forecasting(Regression):
    """Multi-step forecasting: the model maps a window ``(N, T, F)`` to the next ``H`` values ``(N, H)``.

    The forecast series is input feature 0 (the ``timeseries`` dataset is univariate). Loss: MSE on
    standardized targets (as regression). Metrics, in series units, averaged over windows and steps:
    ``mae``, ``rmse``, ``naive_mae`` (the naive last-value forecast: the window's last value repeated
    for all ``H`` steps) and ``mase = mae / naive_mae``. Hyndman & Koehler (2006) scale by the in-sample
    one-step naive MAE; here the naive forecast of the same windows is the scale, so ``mase < 1`` reads
    "beats the naive forecast on this split". ONNX output: ``prediction`` ``(N, H)`` float32.
    """

    name = "forecasting"
    onnx_outputs = ("prediction",)
    maximize = frozenset()
    main_metric = "mae"

    def new_state(self, output_dim: int, device: torch.device) -> dict[str, torch.Tensor]:
        z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        return {"se": z(), "ae": z(), "naive_ae": z(), "values": z(), "loss_sum": z(), "count": z()}

    def update(
        self, state: dict[str, torch.Tensor], outputs: torch.Tensor, target: torch.Tensor, loss: Any = None,
        inputs: torch.Tensor | None = None,
    ) -> None:
        out, tgt = outputs.detach().double(), target.double().reshape(outputs.shape)
        state["se"] += ((out - tgt) ** 2).sum()
        state["ae"] += (out - tgt).abs().sum()
        if inputs is not None:
            last = naive_forecast(inputs).double()
            state["naive_ae"] += (tgt - last[:, None]).abs().sum()
        state["values"] += tgt.numel()
        if loss is None:
            loss = self.loss(outputs, target)
        state["loss_sum"] += loss.detach().double() * tgt.shape[0]
        state["count"] += tgt.shape[0]

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        values, n = max(float(state["values"]), 1.0), max(float(state["count"]), 1.0)
        mae, naive = float(state["ae"]) / values, float(state["naive_ae"]) / values
        return {"loss": float(state["loss_sum"]) / n, "mae": mae, "rmse": (float(state["se"]) / values) ** 0.5,
                "naive_mae": naive, "mase": mae / naive if naive > 0 else float("nan")}

    def plots(self, folder: Path, x: np.ndarray, y: np.ndarray, outputs: np.ndarray, meta: Any) -> list[Path]:
        from trainforge import plots

        naive = naive_forecast(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()
        return [plots.forecast_vs_actual(y, outputs, naive, folder / "forecast_vs_actual.png")]


def naive_forecast(inputs: torch.Tensor) -> torch.Tensor:
    """The last observed value of feature 0 of each window: ``(N, T, F)`` or ``(N, T)`` -> ``(N,)``."""
    return inputs[:, -1, 0] if inputs.ndim == 3 else inputs[:, -1]


class Reconstruction(Task):
    """Reconstruct the input: outputs and targets are ``(N, *input_shape)`` float32 in input units.

    Loss: MSE on standardized values (errors divided by the training features' std, so every feature
    counts alike). Metrics: ``mse`` and ``mae`` in input units, averaged over all values (as
    ``sklearn.metrics.mean_squared_error`` on the flattened arrays). ONNX output: ``reconstruction``.
    """

    name = "reconstruction"
    onnx_outputs = ("reconstruction",)
    main_metric = "mse"

    def __init__(self, input_std: Any = None) -> None:
        self.input_std = None if input_std is None else torch.as_tensor(input_std, dtype=torch.float32)
        self._scale = DeviceConstant(self.input_std)

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        err = outputs.float() - target
        if self.input_std is not None:
            err = err / self._scale.on(err.device)
        return err.pow(2).mean()

    def new_state(self, output_dim: int, device: torch.device) -> dict[str, torch.Tensor]:
        z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        return {"se": z(), "ae": z(), "values": z(), "loss_sum": z(), "count": z()}

    def update(
        self, state: dict[str, torch.Tensor], outputs: torch.Tensor, target: torch.Tensor, loss: Any = None,
        inputs: torch.Tensor | None = None,
    ) -> None:
        err = outputs.detach().double() - target.double()
        state["se"] += (err**2).sum()
        state["ae"] += err.abs().sum()
        state["values"] += err.numel()
        if loss is None:
            loss = self.loss(outputs, target)
        state["loss_sum"] += loss.detach().double() * err.shape[0]
        state["count"] += err.shape[0]

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        values, n = max(float(state["values"]), 1.0), max(float(state["count"]), 1.0)
        return {"loss": float(state["loss_sum"]) / n, "mse": float(state["se"]) / values,
                "mae": float(state["ae"]) / values}

    def head(self, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (outputs,)

    def plots(self, folder: Path, x: np.ndarray, y: np.ndarray, outputs: np.ndarray, meta: Any) -> list[Path]:
        from trainforge import plots

        grid = [("original", x[:10]), ("reconstructed", outputs[:10])]
        return [plots.image_grid(grid, folder / "reconstructions.png", "test: originals vs reconstructions")]


class Generation(Task):
    """Generate samples like the data. The model owns its training step (e.g. a GAN), so loss and
    metrics are what its ``training_step`` / ``validation_step`` return. ONNX output: ``samples``
    ``(N, *input_shape)`` float32 in data units, from the model's input code (e.g. a latent ``(N, Z)``).
    """

    name = "generation"
    onnx_outputs = ("samples",)

    def _owned(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError("the generation task needs a model that owns its training step (e.g. gan)")

    loss = new_state = update = compute = _owned

    def head(self, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (outputs,)

    def plots(self, folder: Path, x: np.ndarray, y: np.ndarray, outputs: np.ndarray, meta: Any) -> list[Path]:
        from trainforge import plots

        grid = [("data", x[:10]), ("generated", outputs[:10]), ("generated", outputs[10:20])]
        return [plots.image_grid(grid, folder / "samples.png", "test data vs generated samples")]
