"""Batch inference with onnxruntime from a trainforge ONNX file; no torch needed.

Execution providers: ``auto`` asks for CUDA only when the CUDA provider can really load
(:func:`trainforge.exporting.providers.cuda_usable`: onnxruntime-gpu lists it even on machines without a
GPU, then prints a loud error and silently falls back to CPU), else CPU. ``cuda`` / ``cpu`` force one.
The provider that actually ran is reported; ``allow_fallback=False`` turns a fallback from CUDA to CPU into
an error. CUDA sessions run with :data:`~trainforge.exporting.providers.CUDA_OPTIONS` (no TF32), as in
the export gate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.atomic import atomic_output
from trainforge.errors import DataError, TrainforgeError, row_label
from trainforge.exporting.providers import CPU, CUDA, PROVIDERS, usable_providers
from trainforge.exporting.sessions import open_session, session_options
from trainforge.exporting.sources import resolve_model

log = logging.getLogger(__name__)

__all__ = ["CPU", "CUDA", "PROVIDERS", "PredictResult", "open_session", "predict", "session_options", "usable_providers"]
#: rows read per chunk: memory stays flat however long the file (65536 let parser and allocator
#: buffers creep up for ~10 chunks: peak RSS 1.4x higher at 1M rows than at 100k; benchmarks/)
CHUNK_ROWS = 16384
#: rows per onnxruntime call: bounds the activations (a CNN's first conv is 8 KiB per row of 8x8 digits)
RUN_ROWS = 4096


@dataclass
class PredictResult:
    """``provider``: the execution provider that ran; ``metrics``: accuracy or MSE/MAE when a target was given."""

    rows: int
    provider: str
    output: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    predictions: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "provider": self.provider, "output": self.output, "metrics": self.metrics}


def read_chunks(path: str | Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[Any]:
    """Yield pandas DataFrames (CSV, Parquet) or numpy arrays (.npy, memory-mapped) of at most ``chunk_rows``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
            for start in range(0, len(arr), chunk_rows):
                yield np.asarray(arr[start : start + chunk_rows])
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        elif suffix in (".csv", ".txt", ".gz"):
            yield from pd.read_csv(path, chunksize=chunk_rows)
        else:
            raise DataError(f"{path}: unsupported input format {suffix!r}; use .csv, .npy or .parquet")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def to_features(chunk: Any, meta: dict[str, Any], target: str | None, path: Path, first_row: int) -> tuple[np.ndarray, Any]:
    """Features reshaped to ``(N, *input_shape)`` float32, and the target column (or None)."""
    shape = [int(d) for d in meta["input_shape"][1:]]
    width = int(np.prod(shape))
    y, columns = None, None
    if isinstance(chunk, np.ndarray):
        x = chunk.reshape(len(chunk), -1)
    else:
        if target is not None:
            if target not in chunk.columns:
                raise DataError(f"{path}: no target column {target!r}; columns: {', '.join(map(str, chunk.columns))}")
            y = chunk[target].to_numpy()
            chunk = chunk.drop(columns=[target])
        names = meta.get("feature_names") or []
        if names and len(names) == width and set(names) <= set(map(str, chunk.columns)):
            chunk = chunk[names]  # match by name, in the training order
        from pandas.api.types import is_numeric_dtype

        for col in chunk.columns:
            if not is_numeric_dtype(chunk[col].dtype):  # also pandas' extension dtypes (str in pandas 3)
                ok = chunk[col].map(_is_number).to_numpy(dtype=bool)
                if not ok.all():
                    pos = int(np.flatnonzero(~ok)[0])
                    raise DataError(f"{path}: {row_label(first_row + pos, _is_csv(path))}, column {col!r}: not a "
                                    f"number ({chunk[col].iloc[pos]!r})")
        x, columns = chunk.to_numpy(dtype=np.float32), list(chunk.columns)
    if x.shape[1] != width:
        raise DataError(
            f"{path}: {x.shape[1]} feature columns, but the model expects {width} "
            f"(input shape {shape}){' besides the target' if target else ''}"
        )
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), *shape)
    if not np.isfinite(x).all():
        row, col = (int(i) for i in np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0])
        name = repr(str(columns[col])) if columns is not None and len(columns) == x.reshape(len(x), -1).shape[1] \
            else str(col + 1)
        raise DataError(f"{path}: {row_label(first_row + row, _is_csv(path))}, column {name}: NaN or infinite feature")
    return x, y


def _is_csv(path: Path) -> bool:
    return Path(path).suffix.lower() in (".csv", ".txt", ".gz")


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def predict(
    model: str | Path,
    input: str | Path,
    output: str | Path | None = None,
    *,
    target: str | None = None,
    provider: str = "auto",
    allow_fallback: bool = True,
    tracking_uri: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    threads: int | None = None,
) -> PredictResult:
    """Run a trainforge ONNX model on a CSV, .npy or Parquet file, chunk by chunk.

    Output CSV columns: ``prediction`` (a class label for classification, the value for regression,
    ``prediction_<i>`` for several targets) and, for classification, ``prob_<class>`` per class. With
    ``target``, the column is compared to the predictions: ``accuracy`` (labels compared as strings) or
    ``mse``/``mae``. ``threads``: onnxruntime intra-op threads (default: the CPUs this process may use).
    Raises :class:`DataError` for malformed input (naming file, row and column).
    """
    import pandas as pd

    from trainforge.exporting import metadata

    path = resolve_model(str(model), tracking_uri)
    session, active = open_session(path, provider, threads, allow_fallback=allow_fallback)
    meta = metadata.from_session(session)
    if "task" not in meta:
        raise TrainforgeError(f"{path}: not a trainforge model (no trainforge.* metadata)")
    out_path = Path(output) if output else None
    with atomic_output(out_path) if out_path else contextlib.nullcontext(None) as tmp_path:
        rows, correct, se, ae, frames = _predict_chunks(session, meta, input, target, chunk_rows, tmp_path)
    metrics: dict[str, float] = {}
    if target is not None:
        if meta["task"] == "classification":
            metrics["accuracy"] = correct / rows
        else:
            metrics.update(mse=se / rows, mae=ae / rows)
    predictions = pd.concat(frames, ignore_index=True) if frames else None
    return PredictResult(rows, active, str(out_path) if out_path else None, metrics, predictions)


def _predict_chunks(session: Any, meta: dict[str, Any], input: str | Path, target: str | None, chunk_rows: int,
                    out_path: Path | None) -> tuple[int, int, float, float, list[Any]]:
    """Predict chunk by chunk, appending to ``out_path`` (else collecting frames); raises DataError for no rows."""
    import pandas as pd

    from trainforge.exporting import metadata

    classes, outputs = meta.get("class_names"), meta["outputs"]
    rows, correct, se, ae = 0, 0, 0.0, 0.0
    frames, as_index = [], None
    for chunk in read_chunks(input, chunk_rows):
        feeds, y = to_inputs(chunk, meta, target, Path(input), rows)
        result = dict(zip(outputs, _run(session, outputs, feeds), strict=True))
        if meta["task"] == "classification":
            probs = result["probabilities"]
            classes = metadata.class_names(meta, probs.shape[1])
            labels = np.asarray(classes, dtype=object)[probs.argmax(1)]
            frame = pd.DataFrame({"prediction": labels})
            for i, name in enumerate(classes):
                frame[f"prob_{name}"] = probs[:, i]
            if y is not None:
                truth = _labels(y)
                if as_index is None:  # decided on the first chunk: names, or indices of the class names
                    as_index = _targets_are_indices(truth, classes, input, target)
                if as_index:
                    truth = _index_to_name(truth, classes, input, rows)
                correct += int((labels.astype(str) == truth).sum())
        else:  # regression/forecasting "prediction"; other tasks' first output, flattened per row
            pred = result["prediction"] if "prediction" in result else result[outputs[0]]
            pred = pred.reshape(len(pred), -1)
            cols = ["prediction"] if pred.shape[1] == 1 else [f"prediction_{i}" for i in range(pred.shape[1])]
            frame = pd.DataFrame(pred, columns=cols)
            if y is not None:
                err = pred - np.asarray(y, dtype=np.float64).reshape(len(y), -1)
                se, ae = se + float((err**2).sum()), ae + float(np.abs(err).sum())
        if out_path:
            write_csv(frame, out_path, header=rows == 0)
        else:
            frames.append(frame)
        rows += len(frame)
    if rows == 0:
        raise DataError(f"{input}: no rows")
    return rows, correct, se, ae, frames


def _run(session: Any, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run`` over ``feeds`` (input name -> rows) in slices of :data:`RUN_ROWS` rows, outputs concatenated."""
    n = len(next(iter(feeds.values())))
    if n <= RUN_ROWS:
        return session.run(outputs, feeds)
    parts = [session.run(outputs, {k: v[i:i + RUN_ROWS] for k, v in feeds.items()}) for i in range(0, n, RUN_ROWS)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(outputs))]


def to_inputs(chunk: Any, meta: dict[str, Any], target: str | None, path: Path,
              first_row: int) -> tuple[dict[str, np.ndarray], Any]:
    """The session's inputs for a chunk, and its target column (or None): the raw columns of a raw table's
    model (``trainforge.columns``, :func:`trainforge.data.raw_inputs`), else :func:`to_features`."""
    if not meta.get("columns"):
        x, y = to_features(chunk, meta, target, path, first_row)
        return {meta["input_name"]: x}, y
    from trainforge.data import Column, raw_inputs

    if isinstance(chunk, np.ndarray):
        raise DataError(f"{path}: this model takes named raw columns; give a CSV or Parquet file, not .npy")
    y = None
    if target is not None:
        if target not in chunk.columns:
            raise DataError(f"{path}: no target column {target!r}; columns: {', '.join(map(str, chunk.columns))}")
        y = chunk[target].to_numpy()
    return raw_inputs(chunk, [Column.from_dict(c) for c in meta["columns"]], str(path), strict=True), y


def write_csv(frame: Any, path: Path, header: bool) -> None:
    """Write (``header=True``) or append a chunk of predictions as CSV.

    The header comes from pandas; the rows go through pyarrow's C++ CSV writer, ~7x faster than
    ``DataFrame.to_csv`` on float columns (most of predict's time otherwise) and the same shortest
    round-trip text for each float32 (``1`` rather than ``1.0``). Strings are quoted only when they
    must be (a comma, quote or line break in a class label).
    """
    import pyarrow as pa
    from pyarrow import csv as pacsv

    special = (",", '"', "\n", "\r")
    needs_quotes = any(
        any(ch in str(v) for ch in special for v in frame[col].unique())
        for col in frame.columns if frame[col].dtype == object or str(frame[col].dtype).startswith("str"))
    with open(path, "wb" if header else "ab") as fh:
        if header:
            fh.write(frame.iloc[:0].to_csv(index=False).encode())
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed" if needs_quotes else "none")
        pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), fh, options)


def _targets_are_indices(truth: np.ndarray, classes: list[Any], path: Any, target: str) -> bool:
    """True when the target column holds class indices 0..K-1 rather than the model's class names (e.g.
    scikit-learn's ``load_iris(as_frame=True).frame``: 0/1/2 for setosa/versicolor/virginica); a column
    matching neither is a DataError rather than a silent accuracy of 0."""
    names = {str(c) for c in classes}
    values = set(truth.tolist())
    if values & names:
        return False
    if all(v.lstrip("-").isdigit() and 0 <= int(v) < len(classes) for v in values):
        log.warning("%s: column %r holds class indices 0..%d, not the model's class names (%s): read as indices",
                    path, target, len(classes) - 1, ", ".join(map(str, classes)))
        return True
    example = ", ".join(sorted(values)[:3])
    raise DataError(f"{path}: column {target!r} ({example}, ...) matches none of the model's classes "
                    f"({', '.join(map(str, classes))})")


def _index_to_name(truth: np.ndarray, classes: list[Any], path: Any, first_row: int) -> np.ndarray:
    names = np.asarray([str(c) for c in classes], dtype=object)
    bad = [i for i, v in enumerate(truth) if not (v.lstrip("-").isdigit() and 0 <= int(v) < len(classes))]
    if bad:
        raise DataError(f"{path}: {row_label(first_row + bad[0], _is_csv(path))}: target {truth[bad[0]]!r} is not a class index "
                        f"0..{len(classes) - 1} like the rows before it")
    return names[truth.astype(np.int64)].astype(str)


def _labels(y: Any) -> np.ndarray:
    """Target values as label strings; integral floats (``3.0``) compare equal to the label ``"3"``."""
    y = np.asarray(y)
    if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    return y.astype(str)
