"""The callbacks that write to MLflow: per-epoch metrics (:class:`MLflowLogger`) and the resumable
checkpoint ``checkpoints/last.pt`` (:class:`ResumeCheckpoint`)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainforge.contracts import Callback
from trainforge.training import checkpoint

if TYPE_CHECKING:  # pragma: no cover - types only
    from trainforge.training.trainer import Trainer

log = logging.getLogger(__name__)


class MLflowLogger(Callback):
    """Log per-epoch metrics (step = epoch, timestamp = the epoch's end) to an MLflow run.

    Epochs are buffered and written with one ``log_batch`` call (chunked by MLflow) in a writer thread,
    once the last write is ``flush_every`` seconds old and has finished, and at the end of the fit; so the
    UI lags by about ``flush_every`` seconds (1 s by default) and nothing is lost. Why batched and in a
    thread (per-epoch calls cost small models several percent of their fit time): ``benchmarks/RESULTS_history.md``.

    The end-of-fit write runs in the writer thread while the caller evaluates the test split and logs the
    run's artifacts. The thread is this logger's own: ``on_close`` (:meth:`Trainer.close
    <trainforge.training.trainer.Trainer.close>`, before the run ends) joins it and re-raises its error, or
    the error of an earlier write; ``on_flush`` writes synchronously. Writes after an exception are
    synchronous, after the running one has finished.
    """

    def __init__(self, run_id: str, flush_every: float = 1.0) -> None:
        self.run_id, self.flush_every = run_id, float(flush_every)
        self.pending: list[tuple[int, int, dict[str, float]]] = []
        self.last_flush = time.monotonic()
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.last_flush = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.pending.append((int(time.time() * 1000), int(epoch), dict(metrics)))
        if time.monotonic() - self.last_flush >= self.flush_every and not self.writing():
            self.flush(background=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.flush(background=True)

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        self.flush()

    def on_flush(self, trainer: Trainer) -> None:
        self.flush()

    def on_close(self, trainer: Trainer) -> None:
        self.wait()

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

    def writing(self) -> bool:
        """True while a background write runs."""
        return self._writer is not None and self._writer.is_alive()

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

        from trainforge.tracking.store import deferred_interrupt

        with deferred_interrupt():
            MlflowClient().log_batch(self.run_id, metrics=metrics)

    def _write_catching(self, metrics: list[Any]) -> None:
        try:
            self._write(metrics)
        except BaseException as exc:  # noqa: BLE001 - re-raised by wait() in the caller's thread
            self._error = exc


class ResumeCheckpoint(Callback):
    """Upload ``checkpoints/last.pt`` (the trainer's full :meth:`~trainforge.training.trainer.Trainer.state_dict`
    plus config and data metadata) to the MLflow run after the first epoch of the fit, then at most every
    ``every_s`` seconds (0: every epoch), so even a short run killed with ``kill -9`` can be resumed.

    ``trainforge train --resume RUN_ID`` continues from it into the same run. Metrics are flushed first,
    so the run never holds a checkpoint newer than its logged metrics.
    """

    def __init__(self, run_id: str, path: Path, config: dict[str, Any], meta: dict[str, Any], every_s: float) -> None:
        self.run_id, self.path, self.config, self.meta = run_id, Path(path), config, meta
        self.every_s, self.last, self.saved = float(every_s), 0.0, False

    def on_fit_start(self, trainer: Trainer) -> None:
        import time

        self.last = time.monotonic()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        import time

        import mlflow

        now = time.monotonic()
        if self.saved and now - self.last < self.every_s:
            return
        self.last, self.saved = now, True
        trainer.flush()  # metrics first: the MLflow logger buffers epochs between its writes
        mlflow.flush_async_logging()
        checkpoint.save_resume(self.path, trainer.state_dict(), self.config, self.meta)
        from trainforge.tracking.store import deferred_interrupt

        with deferred_interrupt():  # the upload reads the run from the store: no signal inside that query
            mlflow.log_artifact(str(self.path), artifact_path=checkpoint.FOLDER, run_id=self.run_id)
