"""Where a run's ONNX export runs, chosen once: in this process, or in the forked export worker.

Both exporters take the same calls, so the run does not branch on which one it has:
``submit(job)`` after the fit (the forked one starts exporting at once), ``result()`` for the
:class:`~trainforge.exporting.exporter.ExportReport` once the run's other artifacts are logged, and ``close()``
(idempotent) before the run's folder is removed. :func:`choose` picks one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportJob:
    """One export: the model (in memory, and as the ``best.pt`` a forked worker rebuilds it from), its task
    and data meta, the float32 parity sample ``(N, *input_shape)`` (a generator's input codes instead), the
    ``.onnx`` path to write, and the run id and resolved config embedded in its metadata."""

    model: Any
    task: Any
    meta: Any
    sample: np.ndarray
    path: Path
    run_id: str | None
    config: dict[str, Any]
    checkpoint: Path | None = None


class InProcessExporter:
    """Runs the export gate in this process when :meth:`result` is called."""

    def __init__(self) -> None:
        self.job: ExportJob | None = None

    def submit(self, job: ExportJob) -> None:
        self.job = job

    def result(self) -> Any:
        """The job's :class:`~trainforge.exporting.exporter.ExportReport`; raises
        :class:`~trainforge.errors.ExportError` when the gate refuses the model."""
        from trainforge.exporting.exporter import export_model

        job = self.job
        if job is None:
            raise RuntimeError("result() before submit()")
        return export_model(job.model, job.task, job.meta, job.sample, job.path, run_id=job.run_id,
                            config=job.config)

    def close(self) -> None:
        pass


class ForkedExporter(InProcessExporter):
    """Sends the job to an :class:`~trainforge.exporting.worker.ExportWorker`; if the worker is gone (it died,
    it never answered) the export runs in this process instead, with a warning."""

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self.worker: Any = worker

    def submit(self, job: ExportJob) -> None:
        from trainforge.exporting.worker import WorkerLost

        super().submit(job)
        if getattr(job.meta, "table", None) is not None:  # the worker rebuilds the network without the preprocessing
            self.close()
            return
        try:
            self.worker.submit(job.checkpoint, job.sample, job.path, run_id=job.run_id, config=job.config)
        except WorkerLost as exc:
            log.warning("%s; the export will run in the training process", exc)
            self.close()

    def result(self) -> Any:
        from trainforge.exporting.worker import WorkerLost

        if self.worker is not None:
            try:
                report = self.worker.result()
                log.info("ONNX export ran in the export worker (pid %d) while this process logged the run",
                         self.worker.process.pid)
                return report
            except WorkerLost as exc:
                log.warning("%s; exporting in the training process", exc)
            finally:
                self.close()
        return super().result()

    def close(self) -> None:
        """End the worker (idempotent)."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close()


def choose(fork: bool) -> InProcessExporter:
    """The exporter of a run: a :class:`ForkedExporter` when ``fork`` and the worker starts (Linux, no thread
    yet, ``TRAINFORGE_EXPORT_WORKER`` not ``0``; see :mod:`trainforge.exporting.worker`), else in process.
    Call it before MLflow or the training start threads."""
    if fork:
        from trainforge.exporting.worker import ExportWorker

        worker = ExportWorker.start()
        if worker is not None:
            return ForkedExporter(worker)
    return InProcessExporter()
