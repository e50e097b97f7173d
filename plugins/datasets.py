"""Built-in datasets: the data scikit-learn ships (no download), CSV files and local MNIST IDX files."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import trainforge
from trainforge import ArrayData, DataError
from trainforge.data import csv_header
from trainforge.errors import row_label

log = logging.getLogger(__name__)

MAX_CLASSES = 50  # an integral target with at most this many distinct values is read as class labels


def _sklearn(loader_name: str, task: str):
    def load():
        import numpy as np
        from sklearn import datasets

        bunch = getattr(datasets, loader_name)()
        names = [str(n) for n in bunch.target_names] if task == "classification" else None
        return ArrayData(features=np.asarray(bunch.data, dtype=np.float32), target=bunch.target, task=task,
                         class_names=names, feature_names=[str(f) for f in bunch.feature_names],
                         source=f"sklearn.datasets.{loader_name}")

    load.__doc__ = f"``sklearn.datasets.{loader_name}()`` as {task} data."
    return load


def load_digits():
    """scikit-learn's 8x8 handwritten digits (UCI), 1797 images as ``(N, 1, 8, 8)`` float32 in [0, 16]."""
    import numpy as np
    from sklearn import datasets

    bunch = datasets.load_digits()
    return ArrayData(features=bunch.images.astype(np.float32)[:, None, :, :], target=bunch.target,
                     task="classification", class_names=[str(c) for c in bunch.target_names],
                     feature_names=[f"pixel_{r}_{c}" for r in range(8) for c in range(8)],
                     source="sklearn.datasets.load_digits")


def infer_task(values) -> str:
    """``classification`` for text, boolean or integral targets with at most MAX_CLASSES values, else regression."""
    import numpy as np
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    v = values.to_numpy(dtype=np.float64)
    integral = np.all(np.isfinite(v)) and np.all(v == np.round(v))
    return "classification" if integral and len(np.unique(v)) <= MAX_CLASSES else "regression"


def wants_streaming(file: Path, streaming) -> bool:
    """``streaming``: true, false or ``"auto"`` (files above ``trainforge.STREAMING_AUTO_BYTES`` bytes)."""
    if isinstance(streaming, str) and streaming.lower() == "auto":
        return file.stat().st_size > trainforge.STREAMING_AUTO_BYTES
    return bool(streaming)


def load_csv(path=None, target=None, features=None, task="auto", delimiter=",", streaming="auto", split=None,
             columns=None, impute="median", drop_duplicates=True):
    """A CSV file with a header row: ``target`` (default: the last column) and the feature columns.

    All-numeric features without empty cells are read as numbers; otherwise (or with ``columns``) the
    features are a raw table core types, cleans and encodes (:attr:`trainforge.ArrayData.table`).
    Errors name the file, the line and the column: a missing file, a missing column, an empty target.
    With ``streaming`` the file is read in blocks (core streams the :class:`trainforge.TableFile` it
    returns, a raw table too: one pass for its statistics) instead of into memory.
    """
    import pandas as pd

    if not path:
        raise DataError("dataset csv needs a file: -p dataset.path=FILE.csv -p dataset.target=COLUMN")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    csv_header(file, delimiter)  # a name given twice is an error, not a silent `a.1`
    if split is not None and wants_streaming(file, streaming):
        return trainforge.TableFile(str(file), "csv", target, features, task, delimiter, columns, impute)
    try:
        frame = pd.read_csv(file, sep=delimiter)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{file}: not a readable CSV file: {exc}") from None
    return frame_to_arrays(frame, file, target, features, task, "csv", raw=(columns, impute, drop_duplicates))


def load_parquet(path=None, target=None, features=None, task="auto", streaming="auto", split=None,
                 columns=None, impute="median", drop_duplicates=True):
    """A Parquet file: ``target`` (default: the last column) and the feature columns, as ``csv``.

    Errors name the file, the row (1-based) and the column. With ``streaming`` the file is read in
    row groups through pyarrow (core streams the :class:`trainforge.TableFile` it returns) instead of into memory.
    """
    import pandas as pd

    if not path:
        raise DataError("dataset parquet needs a file: -p dataset.path=FILE.parquet -p dataset.target=COLUMN")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    if split is not None and wants_streaming(file, streaming):
        return trainforge.TableFile(str(file), "parquet", target, features, task, columns=columns, impute=impute)
    try:
        frame = pd.read_parquet(file)
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: not a readable Parquet file: {exc}") from None
    return frame_to_arrays(frame, file, target, features, task, "parquet", raw=(columns, impute, drop_duplicates))


def raw_table(frame, feature_cols) -> bool:
    """Whether the feature columns need core's cleaning: a non-number or an empty cell in any of them."""
    import pandas as pd

    for col in feature_cols:
        values = frame[col]
        if values.isna().any() or pd.to_numeric(values, errors="coerce").isna().any():
            return True
    return False


def frame_to_arrays(frame, file, target, features, task, kind, raw=(None, "median", True)):
    """Validate a table read by ``csv``/``parquet`` and turn it into :class:`ArrayData`.

    ``raw``: ``(columns, impute, drop_duplicates)``; with declared ``columns`` or features that are not all
    numbers, the features go to core as a raw table (:attr:`ArrayData.table`) instead of float32.

    Errors name rows as ``trainforge.errors.row_label`` does: ``row N`` (data rows from 1), plus ``(line N+1)``
    for a CSV file.
    """
    import numpy as np
    import pandas as pd

    def where(i: int) -> str:
        return row_label(i, csv=kind == "csv")

    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    target = target or columns[-1]
    if target not in columns:
        raise DataError(f"{file}: no target column {target!r}; columns: {', '.join(columns)}")
    feature_cols = list(features) if features else [c for c in columns if c != target]
    missing = [c for c in feature_cols if c not in columns]
    if missing:
        raise DataError(f"{file}: no column(s) {', '.join(missing)}; columns: {', '.join(columns)}")
    columns, impute, drop_duplicates = raw
    if isinstance(columns, str):
        raise DataError(f"dataset {kind}: columns must map names to types, e.g. "
                        "-p 'dataset.columns={site: categorical, id: drop}'")
    table = frame[feature_cols].copy() if columns or raw_table(frame, feature_cols) else None
    for col in [] if table is not None else feature_cols:
        numeric = pd.to_numeric(frame[col], errors="coerce")
        bad = numeric.isna() & frame[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{file}: {where(row)}, column {col!r}: {frame[col].iloc[row]!r} is not a number")
        if numeric.isna().any():
            row = int(np.flatnonzero(numeric.isna().to_numpy())[0])
            raise DataError(f"{file}: {where(row)}, column {col!r}: empty or NaN value")
        frame[col] = numeric
    y_col = frame[target]
    if y_col.isna().any():
        row = int(np.flatnonzero(y_col.isna().to_numpy())[0])
        raise DataError(f"{file}: {where(row)}, column {target!r}: the target is empty")
    if task == "auto":
        task = infer_task(y_col)
        log.warning("%s: task inferred from column %r: %s (set -p dataset.task=classification or regression to "
                    "choose)", file, target, task)
    if task not in ("classification", "regression"):
        raise DataError(f"dataset {kind}: task must be auto, classification or regression, got {task!r}")
    class_names = None
    if task == "classification":
        codes, uniques = pd.factorize(y_col, sort=True)
        y = codes.astype(np.int64)
        class_names = [str(u) for u in uniques]
    else:
        y = pd.to_numeric(y_col, errors="coerce")
        if y.isna().any():
            row = int(np.flatnonzero(y.isna().to_numpy())[0])
            raise DataError(f"{file}: {where(row)}, column {target!r}: {y_col.iloc[row]!r} is not a number")
        y = y.to_numpy(dtype=np.float32)
    if table is not None:
        return ArrayData(features=None, target=y, task=task, class_names=class_names, feature_names=feature_cols,
                         source=str(file), table=table, columns=dict(columns or {}), impute=impute,
                         drop_duplicates=str(drop_duplicates).lower() not in ("false", "0", "no"))
    x = frame[feature_cols].to_numpy(dtype=np.float32)
    return ArrayData(features=x, target=y, task=task, class_names=class_names, feature_names=feature_cols,
                     source=str(file))


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path):
    """Read an IDX file (LeCun's MNIST format, plain or gzip): unsigned bytes, big-endian dimensions."""
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if data.size != expected:
        raise DataError(f"{path}: header says {dims} ({expected} values) but the file holds {data.size}")
    return data.reshape(dims)


def load_mnist(path=None, limit=0):
    """MNIST from the four IDX files in a local directory (plain or ``.gz``), as ``(N, 1, 28, 28)``.

    The official train and t10k parts are concatenated and split by trainforge like any data set;
    ``limit`` > 0 keeps the first ``limit`` images (quick experiments).
    """
    import numpy as np

    if not path:
        raise DataError("dataset mnist needs a directory: -p dataset.path=DIR (holding " + ", ".join(MNIST_FILES) + ")")
    folder = Path(path)
    found = []
    for name in MNIST_FILES:
        candidates = [folder / name, folder / f"{name}.gz"]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            raise DataError(f"{folder}: missing {name}[.gz]; mnist expects the four files "
                            + ", ".join(MNIST_FILES) + " (plain or .gz)")
        found.append(hit)
    train_x, train_y, test_x, test_y = (read_idx(p) for p in found)
    x = np.concatenate([train_x, test_x]).astype(np.float32)[:, None, :, :]
    y = np.concatenate([train_y, test_y]).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{folder}: {len(x)} images but {len(y)} labels")
    if limit:
        x, y = x[: int(limit)], y[: int(limit)]
    h, w = x.shape[2:]
    return ArrayData(features=x, target=y, task="classification", class_names=[str(i) for i in range(10)],
                     feature_names=[f"pixel_{r}_{c}" for r in range(h) for c in range(w)], source=str(folder))


RAW_DEFAULTS = {"columns": None, "impute": "median", "drop_duplicates": True}
RAW_HELP = {"columns": "column types, e.g. {site: categorical, note: text, id: drop} (default: inferred)",
            "impute": "fill of missing numbers: median, mean or constant (0)",
            "drop_duplicates": "drop exact duplicate rows before the split (raw tables)"}


@trainforge.hookimpl
def register_datasets(register):
    for name, loader, task, what in [
        ("iris", "load_iris", "classification", "Fisher's iris: 150 flowers, 4 features, 3 species"),
        ("wine", "load_wine", "classification", "UCI wine: 178 wines, 13 features, 3 cultivars"),
        ("breast-cancer", "load_breast_cancer", "classification", "Wisconsin breast cancer: 569 x 30, 2 classes"),
        ("diabetes", "load_diabetes", "regression", "Efron et al. diabetes: 442 x 10, disease progression"),
    ]:
        register(trainforge.DatasetSpec(name=name, description=what, load=_sklearn(loader, task),
                                        tasks={task, "reconstruction"}))
    register(trainforge.DatasetSpec(
        name="digits", description="UCI handwritten digits: 1797 images 1x8x8, 10 classes (scikit-learn)",
        load=load_digits, tasks={"classification", "reconstruction", "generation"}))
    register(trainforge.DatasetSpec(
        name="csv", description="A CSV file: numeric features and a target column (task inferred)",
        load=load_csv, defaults={"path": None, "target": None, "features": None, "task": "auto", "delimiter": ",",
                                       "streaming": "auto", **RAW_DEFAULTS},
        param_help={"path": "CSV file with a header row", "target": "target column (default: the last one)",
                    "features": "feature columns (default: all others)",
                    "task": "auto, classification or regression",
                    "streaming": "true, false or auto (stream files above 1 GiB through pyarrow)", **RAW_HELP}))
    register(trainforge.DatasetSpec(
        name="parquet", description="A Parquet file: numeric features and a target column (task inferred)",
        load=load_parquet, defaults={"path": None, "target": None, "features": None, "task": "auto",
                                     "streaming": "auto", **RAW_DEFAULTS},
        param_help={"path": "Parquet file", "target": "target column (default: the last one)",
                    "features": "feature columns (default: all others)",
                    "task": "auto, classification or regression",
                    "streaming": "true, false or auto (stream files above 1 GiB through pyarrow)", **RAW_HELP}))
    register(trainforge.DatasetSpec(
        name="mnist", description="MNIST from the four IDX files in a local directory (plain or .gz)",
        load=load_mnist, tasks={"classification"}, defaults={"path": None, "limit": 0},
        param_help={"path": "directory holding the four IDX files", "limit": "keep the first N images (0: all)"}))
