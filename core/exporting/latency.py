"""Measured inference cost of an ONNX file in onnxruntime: latency percentiles and throughput.

One session with fixed options (:func:`trainforge.exporting.sessions.session_options` with ``threads``
intra-op threads, default 1; one inter-op thread, sequential execution, every graph optimisation), on an
explicitly chosen execution provider (no silent CUDA -> CPU fallback). The input is real rows (e.g. the
validation split) cycled to the batch size, so the graph sees the values it will see in service.

Method: :data:`WARMUP_RUNS` untimed calls (first-call allocations, kernel selection), then
:data:`TIMED_RUNS` timed calls, each timed alone with ``time.perf_counter_ns``; fewer (at least
:data:`MIN_RUNS`) when they take longer than :data:`MAX_SECONDS` in total. p50 (the median) and p90 are
taken over those calls. The median is what a study optimises: it ignores the occasional call that another
process on a busy machine delays, which a mean would absorb.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

WARMUP_RUNS = 20
TIMED_RUNS = 300
MIN_RUNS = 50
MAX_SECONDS = 3.0
#: rows per call for ``throughput`` (rows/s): large enough that per-call overhead no longer dominates
THROUGHPUT_BATCH = 1024


@dataclass
class Latency:
    """One file's measured cost: ``p50_ms``/``p90_ms`` per call of ``batch`` rows (milliseconds),
    ``throughput`` in rows/s at :data:`THROUGHPUT_BATCH` (None unless asked), the timed ``runs``, the
    execution ``provider`` that ran and the intra-op ``threads``."""

    batch: int
    p50_ms: float
    p90_ms: float
    runs: int
    provider: str
    threads: int
    throughput: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_timing_session(path: str | Path, provider: str = "cpu", threads: int = 1) -> tuple[Any, str]:
    """A session on ``provider`` (``cpu``/``cuda``) with ``threads`` intra-op threads, and the provider in use.

    Raises ConfigError when ``cuda`` is asked for and cannot run here, TrainforgeError when onnxruntime
    cannot load the file or falls back to another provider.
    """
    from trainforge.exporting.sessions import open_session

    return open_session(path, provider, threads, allow_fallback=False)


def batch_of(rows: Any, batch: int) -> Any:
    """``batch`` rows ``(batch, *rows.shape[1:])`` float32, cycling through ``rows`` when it has fewer.

    ``rows`` may also be a graph's inputs ``{name: (N, ...) array}`` (a raw table's columns, strings or
    float32, see :func:`trainforge.exporting.tabular.split_feeds`): each is cycled the same way, its dtype kept.
    """
    if isinstance(rows, dict):
        return {name: _cycled(np.asarray(v), batch) for name, v in rows.items()}
    return _cycled(np.asarray(rows, dtype=np.float32), batch)


def _cycled(rows: np.ndarray, batch: int) -> np.ndarray:
    if len(rows) == 0:
        raise ValueError("no rows to time the model with")
    index = np.arange(batch) % len(rows)
    return np.ascontiguousarray(rows[index])


def time_calls(session: Any, feed: dict[str, np.ndarray], *, warmup: int = WARMUP_RUNS, runs: int = TIMED_RUNS,
               min_runs: int = MIN_RUNS, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Seconds of each timed ``session.run(None, feed)`` call, after ``warmup`` untimed ones (see module doc)."""
    for _ in range(warmup):
        session.run(None, feed)
    out = []
    started = time.perf_counter()
    for i in range(runs):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        out.append((time.perf_counter_ns() - t0) / 1e9)
        if i + 1 >= min_runs and time.perf_counter() - started > max_seconds:
            break
    return np.asarray(out)


def measure(path: str | Path, rows: Any, *, batch: int = 1, threads: int = 1, provider: str = "cpu",
            throughput: bool = False) -> Latency:
    """Latency of ``path`` at ``batch`` rows per call (and throughput at :data:`THROUGHPUT_BATCH` rows if asked).

    ``rows``: real float32 inputs ``(N, *input_shape)`` of the graph's one input, or all its inputs
    ``{name: (N, ...)}`` (a raw table's columns). Raises as :func:`open_timing_session`.
    """
    session, active = open_timing_session(path, provider, threads)

    def feed(n: int) -> dict[str, np.ndarray]:
        return batch_of(rows, n) if isinstance(rows, dict) else {session.get_inputs()[0].name: batch_of(rows, n)}

    seconds = time_calls(session, feed(batch))
    p50, p90 = (float(v) * 1000.0 for v in np.percentile(seconds, [50, 90]))
    rate = None
    if throughput:
        big = time_calls(session, feed(THROUGHPUT_BATCH), warmup=3, runs=30, min_runs=5)
        rate = THROUGHPUT_BATCH / float(np.median(big))
    return Latency(batch, p50, p90, len(seconds), active, threads, rate)


@dataclass
class Measured:
    """What :func:`measure_model` found: ``figures`` (``val_*`` metrics of the file that ships, ``latency_ms``,
    ``model_bytes``, ``params``, ``throughput`` when asked), ``logged`` (the metrics for the run: p50/p90,
    sizes, ``int8_val_*``) and the :class:`Latency` itself."""

    figures: dict[str, float]
    logged: dict[str, float]
    timing: Latency


@dataclass
class Timing:
    """How a file is timed: ``batch`` rows per call, ``threads`` intra-op threads, on ``provider`` (``cpu``/
    ``cuda``), and whether ``throughput`` at :data:`THROUGHPUT_BATCH` rows is measured too."""

    batch: int = 1
    threads: int = 1
    provider: str = "cpu"
    throughput: bool = False


def measure_model(model: Any, task: Any, bundle: Any, best: dict[str, float], *, run_id: str | None,
                  config: dict[str, Any], quantize: str = "none", timing: Timing | None = None,
                  lock: Any = None) -> Measured:
    """Export ``model`` (best-epoch weights) through the verified ONNX gate into a temporary folder, quantize
    it to int8 when ``quantize == "int8"`` (its validation metrics are then the quantized file's, computed in
    onnxruntime), and time it (:func:`measure` as ``timing`` says) while holding ``lock`` if given.

    ``best``: the trainer's metrics at the best epoch (the fp32 file's validation metrics: the gate holds
    onnxruntime within 1e-4 of torch). Raises ExportError from the gate or the quantizer, TrainforgeError
    when ``provider`` cannot run the file.
    """
    import contextlib
    import tempfile

    from trainforge.exporting.exporter import export_model, export_sample
    from trainforge.exporting.quantize import CALIBRATION_ROWS, quantize_model
    from trainforge.exporting.tabular import split_feeds
    from trainforge.training.data import sample_rows

    how = timing or Timing()
    figures = {k: float(v) for k, v in best.items() if k.startswith("val_")}
    logged: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="trainforge-trial-") as tmp:
        sample = export_sample(model, sample_rows(bundle.test))
        path = export_model(model, task, bundle.meta, sample, Path(tmp) / "model.onnx", run_id=run_id,
                            config=config).path
        if quantize == "int8":
            path = quantize_model(path, Path(tmp) / "model.int8.onnx",
                                  calibration=sample_rows(bundle.train, CALIBRATION_ROWS)).path
            int8 = {f"val_{k}": float(v) for k, v in evaluate_onnx(str(path), bundle.val, task, threads=how.threads,
                                                                    feeds=raw_feeds(bundle, "val")).items()}
            figures.update(int8)  # the shipped (quantized) model's own validation metrics
            logged.update({f"int8_{k}": v for k, v in int8.items()})
        with lock if lock is not None else contextlib.nullcontext():
            latency = measure(path, split_feeds(bundle, "val", 1024), batch=how.batch, threads=how.threads,
                              provider=how.provider, throughput=how.throughput)
        figures.update(latency_ms=latency.p50_ms, model_bytes=float(path.stat().st_size),
                       params=float(sum(p.numel() for p in model.parameters())))
        if latency.throughput is not None:
            figures["throughput"] = latency.throughput
    logged.update(latency_ms_p50=latency.p50_ms, latency_ms_p90=latency.p90_ms, model_bytes=figures["model_bytes"],
                  params=figures["params"], **({"throughput": latency.throughput} if latency.throughput else {}))
    return Measured(figures, logged, latency)


def raw_feeds(bundle: Any, which: str) -> dict[str, np.ndarray] | None:
    """A raw table's graph inputs for the whole split ``which`` (:func:`~trainforge.exporting.tabular.split_feeds`),
    the ``feeds`` :func:`evaluate_onnx` needs for such a file; None for other data (the split's own features)."""
    if getattr(bundle.meta, "table", None) is None:
        return None
    from trainforge.exporting.tabular import split_feeds

    return split_feeds(bundle, which)


def evaluate_onnx(path: str | Path, split: Any, task: Any, batch_size: int = 1024,
                  threads: int | None = None, feeds: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """The task's metrics (``accuracy``, ``loss``, ... for classification) of an ONNX file on a split,
    computed with onnxruntime (CPU, ``threads`` intra-op threads; None: the CPUs this process may use) on
    the raw features: what ``trainforge predict`` would score.

    ``feeds``: the file's inputs for every row of ``split``, in its order, when they are not the split's
    features ``x`` (a raw table's graph takes one input per raw column: :func:`raw_feeds`); the targets
    are still the split's ``y``. Raises TrainforgeError when the file takes raw columns and ``feeds`` is None.
    """
    import torch

    from trainforge.errors import TrainforgeError
    from trainforge.exporting import metadata
    from trainforge.exporting.sessions import open_session
    from trainforge.training.data import batches

    session, _ = open_session(path, "cpu", threads=threads)
    names = [o.name for o in session.get_outputs()]
    # logits (a torch classifier), probabilities only (a scikit-learn one: log p are logits of the same
    # softmax), or the prediction (regression)
    output = next((n for n in ("logits", "probabilities", "prediction") if n in names), names[0])
    if feeds is None and metadata.from_session(session).get("columns"):
        raise TrainforgeError(f"{path} takes a raw table's columns: score it on the split's raw rows (feeds)")
    if feeds is None:
        name = session.get_inputs()[0].name
        chunks = (({name: x.cpu().numpy()}, y) for x, y in batches(split, batch_size))
    else:
        y_all = split.y
        chunks = (({k: v[i:i + batch_size] for k, v in feeds.items()}, y_all[i:i + batch_size])
                  for i in range(0, len(y_all), batch_size))
    state = None
    for feed, y in chunks:
        out = torch.from_numpy(session.run([output], feed)[0])
        if output == "probabilities":
            out = out.clamp_min(1e-12).log()
        out = out.reshape(len(out), -1)
        if state is None:
            state = task.new_state(out.shape[1], torch.device("cpu"))
        task.update(state, out, y.cpu())
    return task.compute(state) if state is not None else {}
