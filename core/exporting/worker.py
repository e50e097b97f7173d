"""The ONNX export of a training run, in a second process that gets ready while the run trains.

A run's verified export (:func:`trainforge.exporting.exporter.export_model`) spends most of its time in
imports (``torch.onnx``, onnxscript, onnxruntime, ``torch._dynamo``: ~2 s) and in the exporter's first
call (~0.6 s more than later ones), all single-threaded Python. ``trainforge train`` forks an
:class:`ExportWorker` when the run starts. On the machine's other core it imports all that and exports a
throw-away one-layer model, while the parent imports MLflow, opens the store, loads the data and trains.
After training the parent writes the best checkpoint and sends the job; the worker rebuilds the model from
the checkpoint, as ``trainforge export`` does, and runs the same gate, while the parent evaluates the test
split, draws the plots and uploads the artifacts. The file, its metadata and the parity figures are the
ones an in-process export gives.

- Chosen once per run by :func:`trainforge.exporting.jobs.choose`, behind the same ``submit``/``result``
  calls as an in-process export.
- Linux only (``fork``), and only from the ``trainforge`` program itself, before it has run any torch
  operation or started a thread (``trainforge.cli.quick_exit.standalone``); the worker runs torch with
  one intra-op thread, as torch's DataLoader workers do. Elsewhere, with
  ``TRAINFORGE_EXPORT_WORKER=0``, or if the worker cannot start or dies, the export runs in the training
  process as before (logged at debug or warning level).
- The worker ignores Ctrl-C (the parent decides) and dies with SIGTERM. Closing the pipe ends it, and so
  does the parent's death (end of file on the pipe).
- Results cross the pipe as plain values: the :class:`~trainforge.exporting.exporter.ExportReport`, or an
  :class:`~trainforge.errors.ExportError` message that the parent raises again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.errors import ExportError

log = logging.getLogger(__name__)


SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
#: seconds to wait for the worker's answer before exporting in process instead (a stuck worker is ended)
RESULT_TIMEOUT_S = 900.0


class WorkerLost(RuntimeError):
    """The worker process ended without an answer; the caller exports in process instead."""


class ExportWorker:
    """A forked process that exports one model to ONNX on request (see the module docstring)."""

    def __init__(self, process: Any, conn: Any) -> None:
        self.process, self.conn = process, conn

    @classmethod
    def start(cls) -> ExportWorker | None:
        """Fork the worker; None where that is not possible or not safe (not Linux)."""
        if not sys.platform.startswith("linux") or os.environ.get("TRAINFORGE_EXPORT_WORKER", "1") == "0":
            return None
        if threading.active_count() > 1:  # a lock another thread holds would stay held in the child
            log.debug("no export worker: this process already runs threads")
            return None
        try:
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=_serve, args=(theirs, mine), name="trainforge-export", daemon=True)
            # the child must not see a Ctrl-C before it has set its own handlers: hold them over the fork
            held = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
            try:
                process.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            theirs.close()
        except Exception as exc:  # noqa: BLE001 - e.g. no fork, process limits: export in process
            log.debug("no export worker (%s); the export runs in the training process", exc)
            return None
        return cls(process, mine)

    def submit(self, checkpoint: str | Path, sample: np.ndarray, path: str | Path, *, run_id: str | None,
               config: dict[str, Any]) -> None:
        """Ask for the export of the model in ``checkpoint`` (a ``best.pt``) to ``path``.

        ``sample``: the float32 parity sample, ``(N, *input_shape)`` data rows (for a generator its input
        codes; see :func:`~trainforge.exporting.exporter.export_sample`). Raises :class:`WorkerLost` when the worker is gone.
        """
        try:
            self.conn.send({"checkpoint": str(checkpoint), "sample": np.ascontiguousarray(sample), "path": str(path),
                            "run_id": run_id, "config": config})
        except (OSError, EOFError) as exc:
            raise WorkerLost(f"export worker gone ({exc})") from None

    def result(self) -> Any:
        """The :class:`~trainforge.exporting.exporter.ExportReport` of the submitted job.

        Raises :class:`~trainforge.errors.ExportError` as an in-process export would, :class:`WorkerLost`
        when the worker died without an answer.
        """
        try:
            if not self.conn.poll(RESULT_TIMEOUT_S):
                raise EOFError
            status, value = self.conn.recv()
        except (OSError, EOFError):
            self.process.join(5)
            raise WorkerLost(f"export worker ended without an answer (exit code {self.process.exitcode})") from None
        finally:
            self.close()
        if status == "error":
            raise ExportError(value)
        if status != "ok":
            raise WorkerLost(value)
        return value

    def close(self) -> None:
        """End the worker (idempotent): close the pipe, then SIGTERM it if it is still running."""
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(5)


def _serve(conn: Any, parent_end: Any) -> None:
    """The worker's body: get ready, then export one job and send the answer."""
    parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (trainforge.interrupts)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closing terminal reaches the group too: the parent decides
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # blocked by the parent over the fork
    import torch

    torch.set_num_threads(1)  # as torch's DataLoader workers do: no intra-op pool inherited across the fork
    try:
        _warm_up()
    except Exception as exc:  # noqa: BLE001 - the real export will report a real problem
        log.debug("export worker warm-up failed: %s", exc)
    try:
        job = conn.recv()
    except (OSError, EOFError):  # the parent closed the pipe or died: nothing to do
        return
    try:
        reply: tuple[str, Any] = ("ok", _export(job))
    except ExportError as exc:
        reply = ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - any other failure: the parent exports in process
        reply = ("lost", f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        conn.send(reply)


def _warm_up() -> None:
    """Import the exporter's dependencies and export a one-layer model to memory: the first export in a
    process costs ~0.6 s more than the next ones (measured with torch 2.13)."""
    import io
    import warnings

    import onnxruntime  # noqa: F401 - imported for the parity check
    import torch

    from trainforge.exporting import exporter  # noqa: F401 - with onnx and the providers

    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(torch.nn.Linear(2, 1).eval(), (torch.zeros(2, 2),), io.BytesIO(),
                              input_names=["input"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              dynamo=True, external_data=False, verbose=False)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)


def _export(job: dict[str, Any]) -> Any:
    """Rebuild the model from the checkpoint (as ``trainforge export`` does) and run the export gate."""
    from trainforge.exporting.exporter import export_model
    from trainforge.training.checkpoint import rebuild

    model, task, meta, _config = rebuild(job["checkpoint"])
    return export_model(model, task, meta, job["sample"], job["path"], run_id=job["run_id"], config=job["config"])
