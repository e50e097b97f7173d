"""Raw tables streamed: a CSV or Parquet file with empty cells, categories and free text, larger than memory.

The statistics come from **one pass** over the file before training (fragment by fragment, memory bounded):

- **Column types** are inferred (:func:`trainforge.data.infer_columns`) on the first :data:`TYPE_ROWS`
  training rows of the file, overridable per column with ``-p 'dataset.columns={site: categorical}'`` as in
  memory. A file whose head is not typical of it (sorted by a column, a column empty in its first rows)
  should declare its columns.
- **Exact per column over every training row:** missing cells, values that do not parse in a numeric column
  (counted as missing), and each categorical column's level counts, up to :data:`TRACKED_LEVELS` distinct
  levels per column. Beyond that cap the counts follow Misra and Gries (1982, "Finding repeated elements"):
  every level seen in more than ``1 / (TRACKED_LEVELS + 1)`` of the training rows is kept, its count short
  by at most that share. The kept levels (at least ``RARE_MIN_COUNT`` rows, at most ``MAX_LEVELS`` per
  column, :mod:`trainforge.training.tabular`) and the missing-value indicators follow these exact counts.
- **A uniform sample** of :data:`SAMPLE_ROWS` training rows (the rows with the smallest hash keys of their
  row index: a sample without replacement, the same whatever the reading order) is what the same
  :class:`~trainforge.training.tabular.TablePrep` as in memory is fitted on: the medians (or means) that
  fill missing numbers, the TF-IDF vocabulary (``TEXT_VOCABULARY`` terms) and its idf weights, and the
  standardization of the encoded features. These are **estimates** from the sample (a median from 50,000
  rows is within about 0.01 standard deviations of the column's); the exported graph holds exactly what
  the training side used, so the export gate is unchanged.
- **A uniform sample** of :data:`HELDOUT_ROWS` test rows is kept raw, as the user gave them: the export
  gate's raw-row parity check (in memory it takes the whole test split) and the served input example.

Each fragment is then encoded by the fitted preprocessing as the reader yields it. Exact duplicate rows are
**not** dropped when streaming (that needs a hash of every row in memory) and train/test overlap is not
counted; the data report says so.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from trainforge.data import Column, infer_columns, raw_inputs
from trainforge.errors import DataError, row_label
from trainforge.training.streaming import (
    SPLIT_CODES,
    StreamingSplit,
    StreamSpec,
    Table,
    is_raw,
    open_table,
    row_uniform,
    split_codes,
    stream_spec,
)
from trainforge.training.tabular import ColumnCounts, column_counts, fit_table

log = logging.getLogger(__name__)

#: training rows (from the start of the file) the column types are inferred on
TYPE_ROWS = 10_000
#: training rows in the uniform sample the preprocessing is fitted on (fill values, TF-IDF, standardization)
SAMPLE_ROWS = 50_000
#: raw test rows kept for the export gate's raw-row parity check
HELDOUT_ROWS = 2_000
#: distinct levels counted exactly per categorical column (Misra-Gries beyond)
TRACKED_LEVELS = 10_000
#: the sample's hash keys use the split seed plus this offset, so they are independent of the split
SAMPLE_SEED = 7_919


class LevelCounter:
    """Level counts of one categorical column, at most ``capacity`` levels tracked (Misra-Gries: when more
    are seen, the (capacity+1)-th largest count is subtracted from every count and levels at zero go)."""

    def __init__(self, capacity: int = TRACKED_LEVELS) -> None:
        self.capacity, self.counts, self.shortfall = capacity, {}, 0

    def update(self, strings: np.ndarray) -> None:
        import pandas as pd

        counts = self.counts
        for level, n in pd.Series(strings, dtype=object).value_counts(sort=False).items():
            counts[level] = counts.get(level, 0) + int(n)
        if len(counts) > self.capacity:
            cut = int(np.partition(np.fromiter(counts.values(), np.int64), -(self.capacity + 1))[-(self.capacity + 1)])
            self.counts = {k: v - cut for k, v in counts.items() if v > cut}
            self.shortfall += cut


class Sample:
    """A uniform sample without replacement of at most ``size`` rows: those with the smallest keys."""

    def __init__(self, size: int) -> None:
        self.size, self.frame, self.keys, self.rows = size, None, np.empty(0), np.empty(0, np.int64)

    def offer(self, frame: Any, keys: np.ndarray, rows: np.ndarray) -> None:
        import pandas as pd

        if len(self.keys) >= self.size:  # full: only rows below the largest kept key can enter
            below = keys < self.keys.max()
            frame, keys, rows = frame[below], keys[below], rows[below]
        if len(keys) == 0:
            return
        frame = frame if self.frame is None else pd.concat([self.frame, frame], ignore_index=True)
        keys, rows = np.concatenate([self.keys, keys]), np.concatenate([self.rows, rows])
        if len(keys) > self.size:
            keep = np.sort(np.argpartition(keys, self.size - 1)[: self.size])
            frame, keys, rows = frame.iloc[keep], keys[keep], rows[keep]
        self.frame, self.keys, self.rows = frame.reset_index(drop=True), keys, rows

    def rows_in_file_order(self) -> Any:
        """The sampled rows, sorted by their row index in the file (a DataFrame; ``None`` when empty)."""
        if self.frame is None:
            return None
        return self.frame.iloc[np.argsort(self.rows, kind="stable")].reset_index(drop=True)


class Pass:
    """The one pass's running statistics (see the module docstring)."""

    def __init__(self, spec: StreamSpec, table: Table) -> None:
        self.spec, self.table = spec, table
        self.sizes = {k: 0 for k in SPLIT_CODES}
        self.labels: set[str] = set()
        self.target_sums: np.ndarray | None = np.zeros(3)  # rows, sum, sum of squares (numeric training targets)
        self.columns: list[Column] | None = None
        self.counts: dict[str, ColumnCounts] = {}
        self.levels: dict[str, LevelCounter] = {}
        self.sample, self.heldout = Sample(SAMPLE_ROWS), Sample(HELDOUT_ROWS)
        self.rows_read = 0

    def typed(self, columns: list[Column]) -> None:
        self.columns = columns
        for col in columns:
            if col.type != "drop":
                self.counts[col.name] = ColumnCounts()
                if col.type == "categorical":
                    self.levels[col.name] = LevelCounter()

    def add(self, first: int, frame: Any) -> None:
        """Count one fragment (a DataFrame of features and target) whose first row is ``first``."""
        spec = self.spec
        index = np.arange(first, first + len(frame))
        codes = split_codes(index, spec.seed, spec.val_fraction, spec.test_fraction)
        self.rows_read += len(frame)
        for k, c in SPLIT_CODES.items():
            self.sizes[k] += int((codes == c).sum())
        self._target(first, frame[spec.target], codes)
        train = codes == 0
        rows = frame[spec.features][train]
        where = f"{self.table.path}: rows {first + 1}-{first + len(frame)}"
        feeds = raw_inputs(rows, self.columns, where)
        for col in self.columns:
            if col.type != "drop":
                missing, junk = column_counts(col, rows[col.name], feeds[col.name][:, 0])
                self.counts[col.name].missing += missing
                self.counts[col.name].junk += junk
                if col.type == "categorical":
                    self.levels[col.name].update(feeds[col.name][:, 0])
        self.sample.offer(rows, row_uniform(index[train], spec.seed + SAMPLE_SEED), index[train])
        test = codes == 2
        self.heldout.offer(frame[spec.features][test], row_uniform(index[test], spec.seed + SAMPLE_SEED), index[test])

    def _target(self, first: int, values: Any, codes: np.ndarray) -> None:
        empty = values.isna().to_numpy()
        if empty.any():
            raise DataError(f"{self.table.path}: {row_label(first + int(np.flatnonzero(empty)[0]), csv=not self.table.parquet)}: "
                            f"empty target {self.spec.target!r}")
        if self.spec.task != "regression":
            self.labels.update(map(str, values.unique()))
            if self.spec.task == "auto" and len(self.labels) > 50:
                self.spec.task = "regression"
        if self.target_sums is not None:  # kept while the target is numeric ("auto" may become regression)
            try:
                t = values.to_numpy(dtype=np.float64)[codes == 0]
                self.target_sums += [len(t), t.sum(), (t * t).sum()]
            except (TypeError, ValueError):
                self.target_sums = None


def one_pass(table: Table, spec: StreamSpec, declared: dict[str, str] | None) -> Pass:
    """Read the file once: types from its first :data:`TYPE_ROWS` training rows, then every fragment counted."""
    import pandas as pd

    counted = Pass(spec, table)
    head: list[tuple[int, Any]] = []
    head_rows = 0
    for first, frame in table.frames([*spec.features, spec.target]):
        if counted.columns is None:  # still gathering the head the column types are inferred on
            head.append((first, frame))
            codes = split_codes(np.arange(first, first + len(frame)), spec.seed, spec.val_fraction, spec.test_fraction)
            head_rows += int((codes == 0).sum())
            if head_rows < TYPE_ROWS:
                continue
            counted.typed(_types(pd.concat([f for _, f in head]), head, spec, declared))
            for f0, f in head:
                counted.add(f0, f)
            head = []
            continue
        counted.add(first, frame)
    if counted.columns is None and head:  # a file shorter than the head
        counted.typed(_types(pd.concat([f for _, f in head]), head, spec, declared))
        for f0, f in head:
            counted.add(f0, f)
    return counted


def _types(frame: Any, head: list[tuple[int, Any]], spec: StreamSpec, declared: dict[str, str] | None) -> list[Column]:
    index = np.concatenate([np.arange(f0, f0 + len(f)) for f0, f in head])
    train = split_codes(index, spec.seed, spec.val_fraction, spec.test_fraction) == 0
    return infer_columns(frame[spec.features][train].reset_index(drop=True), declared)


def open_stream(path: Any, target: str | None, features: list[str] | None, task: str, split: dict[str, Any],
                name: str = "stream", delimiter: str = ",", columns: dict[str, str] | None = None,
                impute: str = "median") -> Any:
    """Stream a table file (:class:`trainforge.TableFile`): a raw table (declared ``columns``, or features that
    are not all numbers or have empty cells, :func:`~trainforge.training.streaming.is_raw`) through
    :func:`open_raw_table`, numeric features through :func:`~trainforge.training.streaming.open_table`."""
    table, spec = stream_spec(path, target, features, task, split, delimiter)
    if columns or is_raw(table, spec.features):
        return open_raw_table(table, spec, name, columns, impute)
    return open_table(path, target, features, task, split, name=name, delimiter=delimiter)


def open_raw_table(table: Table, spec: StreamSpec, name: str, declared: dict[str, str] | None,
                   impute: str = "median") -> Any:
    """A streamed raw table as a :class:`~trainforge.contracts.DataBundle` of encoded splits: one pass
    (:func:`one_pass`), the preprocessing fitted on its sample with its exact counts, each fragment encoded
    as it is read. Raises :class:`DataError` for an empty target cell or a file without training rows,
    :class:`~trainforge.errors.ConfigError` for a bad ``impute`` or ``declared`` type."""
    from trainforge.contracts import DataBundle, DataMeta
    from trainforge.training.streaming import _numeric

    counted = one_pass(table, spec, declared)
    sample = counted.sample.rows_in_file_order()
    if sample is None:
        raise DataError(f"{table.path}: no training rows")
    for col_name, levels in counted.levels.items():
        counted.counts[col_name].levels = levels.counts
        if levels.shortfall:
            log.warning("%s: column %r has more than %d levels: counted approximately (at most %d rows short)",
                        table.path, col_name, TRACKED_LEVELS, levels.shortfall)
    prep = fit_table(sample, impute=impute, columns=counted.columns, counts=counted.counts)
    heldout = counted.heldout.rows_in_file_order()
    prep.heldout = heldout if heldout is not None else sample.head(HELDOUT_ROWS)
    encoded = prep.transform(sample, "training sample")
    mean, std = encoded.mean(0).astype(np.float32), encoded.std(0).astype(np.float32)
    std[std < 1e-8] = 1.0  # a constant feature passes through unscaled, as in memory
    spec.prep = prep
    spec.task = "classification" if spec.task == "auto" else spec.task
    if spec.task == "classification":
        spec.classes = sorted(counted.labels, key=lambda v: (float(v) if _numeric(v) else float("inf"), v))
    report = {"rows_read": counted.rows_read, "streamed": True, "sample_rows": len(sample),
              "heldout_rows": len(prep.heldout), "duplicates_dropped": None, "test_rows_in_train": None,
              "columns": [c.to_dict() for c in prep.columns]}
    meta = DataMeta(dataset=name, task=spec.task, input_shape=(len(prep.feature_names),),
                    output_dim=len(spec.classes) if spec.classes else 1, class_names=spec.classes,
                    feature_names=prep.feature_names, mean=mean, std=std, sizes=counted.sizes,
                    source=str(table.path), table=prep, report=report)
    if spec.task == "regression":
        if counted.target_sums is None:
            raise DataError(f"{table.path}: target {spec.target!r} is not numeric, so it cannot be regressed")
        n, s, ss = counted.target_sums
        tm = s / n
        meta.target_mean = np.array([tm], np.float32)
        meta.target_std = np.array([max(np.sqrt(max(ss / n - tm * tm, 0.0)), 1e-8)], np.float32)
    parts = {k: StreamingSplit(table, spec, k) for k in SPLIT_CODES}
    return DataBundle(parts["train"], parts["val"], parts["test"], meta)


