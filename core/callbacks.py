"""Trainer callbacks: the features that hang on the trainer's events.

Events, in order: ``on_fit_start(trainer)``, then per epoch ``on_epoch_end(trainer, epoch, metrics)``
(``metrics`` holds ``train_*``, ``val_*`` and ``lr``), then ``on_fit_end(trainer)``. If the fit raises
(including ``KeyboardInterrupt`` and ``optuna.TrialPruned``), ``on_exception(trainer, exc)`` runs instead
of ``on_fit_end`` and the exception propagates. A callback stops training by setting
``trainer.should_stop = True``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover - types only
    from .trainer import Trainer

log = logging.getLogger(__name__)


class Callback:
    """Base class with no-op events; override the ones you need."""

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for ``patience`` epochs (Keras' EarlyStopping).

    Improvement is judged by the trainer (``trainer.monitor``, ``trainer.mode``, ``min_delta``).
    """

    def __init__(self, patience: int) -> None:
        self.patience = int(patience)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.patience > 0 and trainer.epochs_without_improvement >= self.patience:
            log.info("early stopping at epoch %d: %s did not improve for %d epochs",
                     epoch, trainer.monitor, self.patience)
            trainer.stopped_early = True
            trainer.should_stop = True


class Checkpoint(Callback):
    """Write the best model so far to ``<workdir>/best.pt`` (crash safety for long fits).

    An improved epoch is written at once when the last write is at least ``min_interval`` seconds old
    (the first improvement always is); otherwise it is written at the next such epoch, at the end of the
    fit or on an exception, whichever comes first. So a killed process loses at most ``min_interval``
    seconds of progress, while a fit of small epochs does not pay a ``torch.save`` per epoch
    (measured in ``benchmarks/``).

    The file is a dict loadable with ``torch.load(path, weights_only=True)``: ``state_dict``,
    ``config`` (the resolved config tree), ``meta`` (the data's metadata), ``epoch`` and ``metrics``.
    """

    def __init__(self, path: Path, config: dict[str, Any], meta: dict[str, Any], min_interval: float = 10.0) -> None:
        self.path, self.config, self.meta = Path(path), config, meta
        self.min_interval = float(min_interval)
        self.written_epoch, self.last_write = 0, -math.inf

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if trainer.best_epoch > self.written_epoch and time.monotonic() - self.last_write >= self.min_interval:
            self.write(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.write(trainer)

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self.write(trainer)

    def write(self, trainer: Trainer) -> None:
        """Save the trainer's best epoch unless it is already on disk."""
        best = trainer.best_epoch
        if best <= self.written_epoch or not trainer.best_state:
            return
        save_checkpoint(self.path, trainer.best_state, self.config, self.meta, best, trainer.history[best - 1])
        self.written_epoch, self.last_write = best, time.monotonic()


def save_checkpoint(
    path: Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any], meta: dict[str, Any],
    epoch: int, metrics: dict[str, float],
) -> None:
    """Atomically write a checkpoint (see :class:`Checkpoint` for its content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    payload = {"format": 1, "state_dict": state_dict, "config": config, "meta": meta,
               "epoch": int(epoch), "metrics": {k: float(v) for k, v in metrics.items()}}
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs from the file)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class ProgressBar(Callback):
    """A tqdm bar over epochs showing the latest metrics."""

    KEYS = ("train_loss", "val_loss", "val_accuracy", "val_r2")

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.bar = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.epochs, desc="epochs", unit="epoch", leave=True, dynamic_ncols=True)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.bar.set_postfix({k: f"{metrics[k]:.4f}" for k in self.KEYS if k in metrics}, refresh=False)
        self.bar.update(1)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.close()

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MLflowLogger(Callback):
    """Log per-epoch metrics (step = epoch, timestamp = the epoch's end) to an MLflow run.

    Epochs are buffered and written with one ``log_batch`` call (chunked by MLflow) when the last write
    is ``flush_every`` seconds old, at the end of the fit and on an exception, so nothing is lost and
    the UI lags by at most ``flush_every`` seconds. Per-epoch calls (even MLflow's asynchronous ones,
    whose writer thread competes with the training loop for the GIL) cost small models several
    percent of their fit time (``benchmarks/``).

    The end-of-fit write runs in a background thread while the caller evaluates the test split and logs
    the run's artifacts; :meth:`wait` joins it and re-raises its error (``trainforge.train`` calls it
    before the run ends). Writes after an exception are synchronous.
    """

    def __init__(self, run_id: str, flush_every: float = 10.0) -> None:
        self.run_id, self.flush_every = run_id, float(flush_every)
        self.pending: list[tuple[int, int, dict[str, float]]] = []
        self.last_flush = time.monotonic()
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.last_flush = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.pending.append((int(time.time() * 1000), int(epoch), dict(metrics)))
        if time.monotonic() - self.last_flush >= self.flush_every:
            self.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.flush(background=True)

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self.flush()

    def flush(self, background: bool = False) -> None:
        """Write the buffered epochs now: one ``log_batch``, in this thread or (``background``) in a
        writer thread that :meth:`wait` joins."""
        self.wait()
        self.last_flush = time.monotonic()
        if not self.pending:
            return
        from mlflow.entities import Metric

        metrics = [Metric(key, float(value), stamp, step)
                   for stamp, step, values in self.pending for key, value in values.items()]
        self.pending = []
        if not background:
            self._write(metrics)
            return
        self._writer = threading.Thread(target=self._write_catching, args=(metrics,),
                                        name="trainforge-mlflow-writer", daemon=True)
        self._writer.start()

    def wait(self) -> None:
        """Join the background write, if any; raises what it raised (e.g. an unreachable tracking server)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write(self, metrics: list[Any]) -> None:
        from mlflow.tracking import MlflowClient

        from .tracking import deferred_interrupt

        with deferred_interrupt():
            MlflowClient().log_batch(self.run_id, metrics=metrics)

    def _write_catching(self, metrics: list[Any]) -> None:
        try:
            self._write(metrics)
        except BaseException as exc:  # noqa: BLE001 - re-raised by wait() in the caller's thread
            self._error = exc


class ResumeCheckpoint(Callback):
    """Upload ``checkpoints/last.pt`` (the trainer's full :meth:`~trainforge.trainer.Trainer.state_dict`
    plus config and data metadata) to the MLflow run, at most every ``every_s`` seconds (0: every epoch).

    ``trainforge train --resume RUN_ID`` continues from it into the same run. Metrics are flushed first,
    so the run never holds a checkpoint newer than its logged metrics.
    """

    def __init__(self, run_id: str, path: Path, config: dict[str, Any], meta: dict[str, Any], every_s: float) -> None:
        self.run_id, self.path, self.config, self.meta = run_id, Path(path), config, meta
        self.every_s, self.last = float(every_s), 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        import time

        self.last = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        import time

        import mlflow

        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        for cb in trainer.callbacks:  # metrics first: the MLflow logger buffers epochs between its writes
            if isinstance(cb, MLflowLogger):
                cb.flush()
        mlflow.flush_async_logging()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"format": 1, "trainer": trainer.state_dict(), "config": self.config, "meta": self.meta}, tmp)
        tmp.replace(self.path)
        mlflow.log_artifact(str(self.path), artifact_path="checkpoints", run_id=self.run_id)
