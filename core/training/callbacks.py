"""The built-in trainer callbacks that need no tracking: early stopping, the best-epoch checkpoint and
the progress bar (the MLflow ones are in :mod:`trainforge.tracking.logger`).

Events, in order: ``on_fit_start(trainer)``, then per epoch ``on_epoch_end(trainer, epoch, metrics)``
(``metrics`` holds ``train_*``, ``val_*`` and ``lr``), then ``on_fit_end(trainer)``. If the fit raises
(including ``KeyboardInterrupt`` and ``optuna.TrialPruned``), ``on_exception(trainer, exc)`` runs instead
of ``on_fit_end`` and the exception propagates. A callback stops training by setting
``trainer.should_stop = True``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainforge.contracts import Callback
from trainforge.training import checkpoint

if TYPE_CHECKING:  # pragma: no cover - types only
    from trainforge.training.trainer import Trainer

log = logging.getLogger(__name__)


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
    """Write the best model so far to ``path`` (``<workdir>/checkpoints/best.pt``; crash safety for long fits).

    An improved epoch is written at once when the last write is at least ``min_interval`` seconds old
    (the first improvement always is); otherwise it is written at the next such epoch, at the end of the
    fit or on an exception, whichever comes first. So a killed process loses at most ``min_interval``
    seconds of progress, while a fit of small epochs does not pay a ``torch.save`` per epoch
    (measured in ``benchmarks/``).

    The file is :func:`trainforge.training.checkpoint.save`'s (``state_dict``, ``config``, ``meta``,
    ``epoch``, ``metrics``).
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
        checkpoint.save(self.path, trainer.best_state, self.config, self.meta, best, trainer.history[best - 1])
        self.written_epoch, self.last_write = best, time.monotonic()


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
