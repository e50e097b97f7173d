"""The contract floor: the base types a plugin implements or receives.

- :class:`Callback`: trainer events a callback plugin overrides (``CallbackSpec.build`` returns one).
- :class:`Task`: loss, metrics and ONNX outputs a task plugin defines (``TaskSpec.build`` returns one).
- :class:`DataMeta`: what core knows about a dataset after loading and splitting it.
- :class:`DataBundle` (of :class:`TensorSplit` or any torch Dataset): the splits a dataset plugin may
  return itself instead of :class:`~trainforge.ArrayData`.
- :class:`TrainContext`: what a callback builder is told about the fit it joins.
- :class:`TrainResult`: what ``trainforge.train(...)`` returns.

This module imports nothing from a wing (see the README's Layout section): the trainer, tracking,
export and tuning stand on these types. torch is imported for type hints only, so ``trainforge plugins``
stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - types only
    import torch


class Callback:
    """Base class with no-op events; override the ones you need.

    Events, in order: ``on_fit_start(trainer)``, then per epoch ``on_epoch_end(trainer, epoch, metrics)``
    (``metrics`` holds ``train_*``, ``val_*`` and ``lr``), then ``on_fit_end(trainer)``. If the fit raises
    (including ``KeyboardInterrupt`` and ``optuna.TrialPruned``), ``on_exception(trainer, exc)`` runs
    instead of ``on_fit_end`` and the exception propagates. ``trainer`` is the running
    :class:`trainforge.Trainer`; a callback stops training by setting ``trainer.should_stop = True``.

    Two more events come from the trainer's owner: ``on_flush(trainer)`` (:meth:`Trainer.flush`, e.g. before a
    resumable checkpoint is saved: write what you buffer) and ``on_close(trainer)`` (:meth:`Trainer.close`,
    after the run's results are logged or the run failed: join the threads you started; an error raised
    fails the run).
    """

    def on_fit_start(self, trainer: Any) -> None:
        pass

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_fit_end(self, trainer: Any) -> None:
        pass

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        pass

    def on_flush(self, trainer: Any) -> None:
        pass

    def on_close(self, trainer: Any) -> None:
        pass


class Task:
    """What a task defines; subclass it in a ``register_tasks`` plugin (see ``docs/plugins.md``).

    - ``loss(outputs, target)``: scalar tensor minimized by the trainer;
    - ``new_state`` / ``update`` / ``compute``: metric accumulation over batches, one host sync per epoch;
    - ``head(outputs)``: raw model outputs -> the ONNX graph outputs named in ``onnx_outputs``;
    - ``plots(folder, x, y, outputs, meta)``: PNG files logged to the run after the test evaluation;
    - ``state_plots(folder, state, meta)``: optionally, those plots drawn from the test split's metric state
      alone (e.g. a confusion matrix from its counts), so no test row is kept in memory.
    """

    name = ""
    #: names of the ONNX graph outputs, in order
    onnx_outputs: tuple[str, ...] = ()
    #: metrics where larger is better (everything else is minimized)
    maximize: frozenset[str] = frozenset()
    #: the metric drawn beside the loss in the learning curves
    main_metric = "loss"

    def loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def new_state(self, output_dim: int, device: torch.device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(
        self, state: dict[str, torch.Tensor], outputs: torch.Tensor, target: torch.Tensor, loss: Any = None,
        inputs: torch.Tensor | None = None,
    ) -> None:
        """Accumulate a batch; ``loss`` (the batch-mean loss, already computed) saves recomputing it.

        ``inputs`` is the raw batch the outputs came from (forecasting compares with the naive forecast).
        """
        raise NotImplementedError

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def fold(self, state: dict[str, Any]) -> None:
        """Move statistics that ``update`` buffers outside the state's tensors into them (no-op by default).

        The trainer calls it once per epoch before it sums the states of DDP ranks, which sees tensors only.
        """

    def head(self, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Map raw model outputs to the ONNX graph outputs named in ``onnx_outputs``."""
        raise NotImplementedError

    def plots(self, folder: Path, x: np.ndarray, y: np.ndarray, outputs: np.ndarray, meta: Any) -> list[Path]:
        """Write the task's test-split plots into ``folder``; ``x``/``y``/``outputs`` are numpy arrays.

        They hold every test row of an in-memory split; of a streamed split (larger than memory), a uniform
        random sample of at most :data:`trainforge.tracking.runlog.PLOT_ROWS` rows, in split order.
        """
        return []

    def state_plots(self, folder: Path, state: dict[str, Any] | None, meta: Any) -> list[Path] | None:
        """Write the test-split plots from ``state``, the metric state ``new_state``/``update`` accumulated
        over the whole test split (folded, summed over DDP ranks; ``None`` for a model that owns its step).

        Return the files written, or ``None`` (the default) to have :meth:`plots` draw them from rows instead.
        """
        return None


@dataclass
class DataMeta:
    """What the trainer, exporter and predictor need to know about the data.

    ``input_shape`` excludes the batch axis; ``mean``/``std`` have the shape the standardization
    broadcasts with (``input_shape`` for per-feature, ``(C, 1, 1)`` for per-channel images) and are
    fitted on the training split only.
    """

    dataset: str
    task: str
    input_shape: tuple[int, ...]
    output_dim: int
    class_names: list[str] | None
    feature_names: list[str] | None
    mean: np.ndarray
    std: np.ndarray
    sizes: dict[str, int] = field(default_factory=dict)
    source: str = ""
    #: regression only: mean and std ``(T,)`` of the training targets (the net learns standardized targets)
    target_mean: np.ndarray | None = None
    target_std: np.ndarray | None = None
    #: a raw table's fitted preprocessing (:class:`trainforge.training.tabular.TablePrep`): the graph's first part.
    #: Not saved in checkpoints: re-fitted from the data (deterministic) when a run is re-exported
    table: Any = None
    #: the data report: rows read, duplicates dropped, test rows also in train, per-column statistics
    report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "task": self.task,
            "input_shape": list(self.input_shape),
            "output_dim": self.output_dim,
            "class_names": self.class_names,
            "feature_names": self.feature_names,
            "mean": self.mean.astype(float).tolist(),
            "std": self.std.astype(float).tolist(),
            "sizes": dict(self.sizes),
            "source": self.source,
            "target_mean": None if self.target_mean is None else self.target_mean.astype(float).tolist(),
            "target_std": None if self.target_std is None else self.target_std.astype(float).tolist(),
            "report": dict(self.report),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataMeta:
        return cls(
            dataset=d["dataset"],
            task=d["task"],
            input_shape=tuple(d["input_shape"]),
            output_dim=int(d["output_dim"]),
            class_names=d.get("class_names"),
            feature_names=d.get("feature_names"),
            mean=np.asarray(d["mean"], dtype=np.float32),
            std=np.asarray(d["std"], dtype=np.float32),
            sizes=dict(d.get("sizes") or {}),
            source=d.get("source", ""),
            target_mean=None if d.get("target_mean") is None else np.asarray(d["target_mean"], np.float32),
            target_std=None if d.get("target_std") is None else np.asarray(d["target_std"], np.float32),
            report=dict(d.get("report") or {}),
        )


@dataclass
class TensorSplit:
    """An in-memory split: ``x`` float32 ``(N, *input_shape)``, ``y`` int64 ``(N,)`` or float32 ``(N, T)``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device))


@dataclass
class DataBundle:
    """Train/validation/test splits plus metadata. Splits are :class:`TensorSplit` or any torch Dataset."""

    train: Any
    val: Any
    test: Any
    meta: DataMeta


@dataclass
class TrainContext:
    """Passed to ``CallbackSpec.build``.

    - ``config``: the resolved config tree (see :mod:`trainforge.config`).
    - ``meta``: the data's metadata (task, input shape, classes, split sizes).
    - ``run_id``: the MLflow run the fit logs to, or ``None`` when tracking is off.
    - ``workdir``: a local folder for checkpoints and plots, uploaded as artifacts at the end.
    - ``quiet``: silence progress output.
    - ``extras``: free-form values from the caller (e.g. the Optuna trial when tuning).
    """

    config: dict[str, Any]
    meta: DataMeta
    task: Task
    workdir: Path
    run_id: str | None = None
    quiet: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a training run produced.

    ``metrics`` holds the final ``test_*`` metrics of the best epoch; ``onnx_path`` is a local path to
    the verified ONNX file (``None`` with ``export=False``); ``parity`` maps batch size to the max abs
    difference between torch and onnxruntime outputs.
    """

    run_id: str | None
    experiment_id: str | None
    metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float
    config: dict[str, Any]
    onnx_path: str | None = None
    parity: dict[str, float] | None = None
    model_uri: str | None = None
    history: list[dict[str, float]] = field(default_factory=list, repr=False)
    #: the trained model in this process: a TrainforgeModel with the best weights, or a fitted estimator
    model: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "metrics": self.metrics,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "train_seconds": round(self.seconds, 3),
            "onnx_path": self.onnx_path,
            "parity_max_abs_diff": self.parity,
            "model_uri": self.model_uri,
            "config": self.config,
        }
