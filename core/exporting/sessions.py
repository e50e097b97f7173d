"""onnxruntime sessions: the one place trainforge creates an ``InferenceSession``.

Every session (the export gate's parity check, ``predict``, latency timing, quantization, study scoring,
the MLflow serving model) gets the same options from :func:`session_options` and is opened by
:func:`open_session`, which also reports the execution provider that actually runs.

Self-contained on purpose: at import this module needs only the standard library (onnxruntime is
imported when a session is opened, trainforge's provider checks only for a provider other than the
CPU), so :mod:`trainforge.exporting.logged` ships a copy of this file with the MLflow serving model
(``code_paths``), where trainforge is not installed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

try:
    from trainforge.errors import TrainforgeError as SessionError
except ImportError:  # the copy shipped with an MLflow serving model: trainforge is not installed there
    SessionError = RuntimeError  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


def cores() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``, capped at ``os.cpu_count()``), at least 1."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    return max(1, min(available, os.cpu_count() or available))


def session_options(threads: int | None = None, spinning: bool = False) -> Any:
    """onnxruntime session options tuned for small (2-8 core), possibly shared CPUs.

    - ``intra_op_num_threads``: ``threads``, else the CPUs this process may run on (:func:`cores`); one
      inter-op thread, sequential execution (the graphs are chains: nothing to run in parallel).
    - Spinning only inside a call: ``session.intra_op.allow_spinning = "1"`` with
      ``session.force_spinning_stop = "1"`` (onnxruntime's session config keys; the second "forces any
      thread-pool threads spinning stop immediately when the last of concurrent Run() calls returns").
      Pool threads busy-wait between the operators of one call, so a batch-1 call pays no thread
      wake-up per operator (turning spinning off entirely made the digits CNN's batch-1 latency 2x
      slower, benchmarks/RESULTS.md), and they sleep between calls, so an idle or infrequently called
      session leaves a small machine's cores free (onnxruntime's thread-management docs).
      ``spinning=True`` keeps onnxruntime's default (threads also spin for a while after a call).
    - ``ORT_ENABLE_ALL``: every graph optimisation, including layout transforms and fusions.
    - ``log_severity_level = 3``: errors only (onnxruntime's warnings about unused initializers are noise).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = int(threads) if threads else cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "0" if spinning else "1")
    return options


def _providers(provider: str) -> tuple[list[Any], str]:
    """What ``InferenceSession(providers=...)`` takes for ``provider``, and the provider wanted first."""
    if provider in ("cpu", CPU):
        return [CPU], CPU
    from trainforge.exporting.providers import PROVIDERS, session_providers, usable_providers

    requested = [provider] if provider in PROVIDERS.values() else usable_providers(provider)
    return session_providers(requested), requested[0]


def open_session(model: str | Path | bytes, provider: str = "cpu", threads: int | None = None, *,
                 allow_fallback: bool = True, spinning: bool = False) -> tuple[Any, str]:
    """Open an onnxruntime session on ``model`` and return it with the execution provider that runs it.

    - ``model``: an ONNX file's path, or a serialized ``ModelProto`` (``bytes``).
    - ``provider``: ``auto`` (CUDA only where it can really run, see
      :func:`trainforge.exporting.providers.cuda_usable`, else CPU), ``cuda``, ``cpu``, or an onnxruntime
      provider name (``CUDAExecutionProvider``). CUDA sessions get
      :data:`~trainforge.exporting.providers.CUDA_OPTIONS` (no TF32).
    - ``threads``: intra-op threads (default: the CPUs this process may use); ``spinning``: see
      :func:`session_options`.
    - Raises :class:`~trainforge.errors.ConfigError` for an unknown provider or a forced CUDA that cannot
      run here, :class:`~trainforge.errors.TrainforgeError` when onnxruntime cannot load the model, or when
      it falls back to another provider and ``allow_fallback`` is False (a fallback is logged otherwise).
    """
    import onnxruntime as ort

    providers, wanted = _providers(provider)
    label = "the ONNX model" if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                       session_options(threads, spinning), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for a bad file
        raise SessionError(f"{label}: cannot load the ONNX model ({exc})") from None
    active = session.get_providers()[0]
    if active != wanted:
        if not allow_fallback:
            raise SessionError(f"{wanted} was requested but onnxruntime fell back to {active}")
        log.warning("%s was requested but onnxruntime runs on %s", wanted, active)
    return session, active
