"""Built-in time-series datasets: ``timeseries`` (a numeric column of a CSV or Parquet file, cut into
windows) and ``sunspots`` (the yearly sunspot numbers statsmodels ships: a real series, no download)."""

from __future__ import annotations

import math
from pathlib import Path

import trainforge
from trainforge import DataError
from trainforge.errors import row_label

SUNSPOTS_HELP = "the sunspots dataset needs statsmodels: pip install 'trainforge[series]'"


def windows(values, window: int, horizon: int, stride: int):
    """Sliding windows of a 1-D series: inputs ``(N, window, 1)`` and the next ``horizon`` values ``(N, horizon)``.

    Window ``i`` starts at ``i * stride``. Raises :class:`DataError` when the series is too short.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float32)
    if window < 1 or horizon < 1 or stride < 1:
        raise DataError(f"window, horizon and stride must be >= 1, got {window}, {horizon}, {stride}")
    starts = np.arange(0, len(values) - window - horizon + 1, stride)
    if len(starts) < 10:
        raise DataError(f"a series of {len(values)} values gives {len(starts)} windows of {window} + {horizon} "
                        "(stride {stride}); at least 10 are needed")
    x = np.stack([values[s:s + window] for s in starts])[:, :, None]
    y = np.stack([values[s + window:s + window + horizon] for s in starts])
    return x, y


def read_column(path, column=None):
    """A numeric column of a CSV (header row) or Parquet file as float32 ``(T,)``, in file order.

    ``column`` defaults to the last column. Errors name the file, the line (CSV, header = line 1)
    or row (Parquet, 1-based) and the column of a missing or non-numeric value.
    """
    import numpy as np
    import pandas as pd

    if not path:
        raise DataError("dataset timeseries needs a file: -p dataset.path=FILE.csv -p dataset.column=NAME")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    parquet = file.suffix.lower() in (".parquet", ".pq")
    try:
        frame = pd.read_parquet(file) if parquet else pd.read_csv(file)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: not a readable {'Parquet' if parquet else 'CSV'} file: {exc}") from None
    frame.columns = [str(c) for c in frame.columns]
    if column is None:
        if not len(frame.columns):
            raise DataError(f"{file}: no columns")
        column = frame.columns[-1]
    if column not in frame.columns:
        raise DataError(f"{file}: no column {column!r}; columns: {', '.join(frame.columns)}")
    values = pd.to_numeric(frame[column], errors="coerce")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        where = row_label(row, csv=not parquet)
        raise DataError(f"{file}: {where}, column {column!r}: {frame[column].iloc[row]!r} is not a number")
    return values.to_numpy(dtype=np.float32), str(column)


def series_data(values, name: str, window: int, horizon: int, stride: int, source: str):
    """:class:`ArrayData` for forecasting: chronological windows, a gap so no test target is trained on."""
    x, y = windows(values, int(window), int(horizon), int(stride))
    gap = max(0, math.ceil(int(horizon) / int(stride)) - 1)  # windows whose targets overlap the next split's
    return trainforge.ArrayData(
        features=x, target=y, task="forecasting", layout="sequence", ordered=True, gap=gap,
        feature_names=[f"{name}_t-{int(window) - 1 - i}" for i in range(int(window))], source=source)


def load_timeseries(path=None, column=None, window=24, horizon=1, stride=1):
    """Windows of ``column`` of a CSV or Parquet file: ``window`` past values -> the next ``horizon``."""
    values, column = read_column(path, column)
    return series_data(values, column, window, horizon, stride, f"{path}:{column}")


def sunspots_file() -> Path:
    """statsmodels' ``datasets/sunspots/sunspots.csv`` (yearly mean sunspot numbers 1700-2008, SILSO)."""
    try:
        import statsmodels.datasets.sunspots as sunspots
    except ImportError:
        raise DataError(SUNSPOTS_HELP) from None
    return Path(sunspots.__file__).with_name("sunspots.csv")


def load_sunspots(window=24, horizon=3, stride=1):
    """Yearly sunspot numbers 1700-2008 (309 values, statsmodels' copy of SIDC/SILSO data)."""
    file = sunspots_file()
    values, _ = read_column(file, "SUNACTIVITY")
    return series_data(values, "SUNACTIVITY", window, horizon, stride, f"{file} (statsmodels)")


@trainforge.hookimpl
def register_datasets(register):
    help_ = {"window": "past values per sample", "horizon": "future values to forecast",
             "stride": "steps between consecutive windows"}
    register(trainforge.DatasetSpec(
        name="timeseries", description="A numeric column of a CSV/Parquet file as windows -> next values "
                                       "(chronological split)",
        load=load_timeseries, tasks={"forecasting"},
        defaults={"path": None, "column": None, "window": 24, "horizon": 1, "stride": 1},
        param_help={"path": "CSV or Parquet file, rows in time order",
                    "column": "the series column (default: the last one)", **help_}))
    register(trainforge.DatasetSpec(
        name="sunspots", description="Yearly sunspot numbers 1700-2008 (statsmodels; extra 'series')",
        load=load_sunspots, tasks={"forecasting"}, defaults={"window": 24, "horizon": 3, "stride": 1},
        param_help=help_))
