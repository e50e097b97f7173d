"""Larger-than-memory tables: Parquet or CSV files streamed through pyarrow in record batches.

- **Splits** are decided per row by a stable hash of its global row index (SplitMix64, Steele et al.
  2014, "Fast splittable pseudorandom number generators"), so train/val/test are identical across runs,
  processes and DDP ranks, and no split is ever materialized.
- **Sharding**: the file's fragments (Parquet row groups, CSV blocks) are dealt round-robin to the
  ``world_size * num_workers`` readers (DDP rank x DataLoader worker); each row is read by exactly one
  reader per epoch.
- **Shuffling**: fragment order is shuffled per epoch, then rows pass through a bounded shuffle buffer
  (``shuffle_buffer`` rows), as in ``tf.data.Dataset.shuffle``.
- **Standardization** statistics (mean/std of the training rows) and class labels come from one
  streaming pass (float64 sums), before training.

Memory stays bounded by one fragment plus the shuffle buffer, whatever the file size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainforge.errors import DataError, row_label
from trainforge.specs import STREAMING_AUTO_BYTES

log = logging.getLogger(__name__)

#: files larger than this stream automatically (``streaming: auto``); bytes
AUTO_THRESHOLD = STREAMING_AUTO_BYTES
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def split_codes(index: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> np.ndarray:
    """Split code per global row index: 0 train, 1 val, 2 test (SplitMix64 hash -> uniform [0, 1))."""
    u = row_uniform(index, seed)
    return np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0)).astype(np.int8)


def row_uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) float64 per global row index (SplitMix64 of ``index`` + ``seed``): stable across runs,
    processes and reading orders."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Table:
    """A Parquet or CSV file read fragment by fragment: ``fragments()`` yields ``(first_row, pyarrow.Table)``."""

    def __init__(self, path: str | Path, block_rows: int = 65536, delimiter: str = ",") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"data file not found: {self.path}")
        self.block_rows, self.delimiter = block_rows, delimiter
        self.parquet = self.path.suffix.lower() in (".parquet", ".pq")
        self.columns = self._columns()

    def _columns(self) -> list[str]:
        if self.parquet:
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(self.path).schema_arrow.names)
        return next(iter(self._csv_reader())).schema.names

    def _csv_reader(self) -> Any:
        import pyarrow.csv as pcsv

        return pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=1 << 22),
                             parse_options=pcsv.ParseOptions(delimiter=self.delimiter))

    def fragments(self, columns: list[str], shard: int = 0, n_shards: int = 1,
                  order: np.ndarray | None = None) -> Iterator[tuple[int, Any]]:
        """Fragments of this shard (``index % n_shards == shard``), in ``order`` when given (Parquet)."""
        if self.parquet:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(self.path)
            starts = np.concatenate([[0], np.cumsum([pf.metadata.row_group(i).num_rows
                                                     for i in range(pf.num_row_groups)])])
            groups = order if order is not None else np.arange(pf.num_row_groups)
            for g in groups:
                if g % n_shards == shard:
                    yield int(starts[g]), pf.read_row_group(int(g), columns=columns)
            return
        import pyarrow as pa

        first = 0
        try:
            for i, batch in enumerate(self._csv_reader()):
                if i % n_shards == shard:
                    yield first, pa.Table.from_batches([batch]).select(columns)
                first += batch.num_rows
        except pa.ArrowInvalid as exc:
            raise DataError(f"{self.path}: cannot parse near {row_label(first, csv=True)}: {exc} (a column with "
                            "empty cells or words further down streams as a raw table when declared: "
                            "-p 'dataset.columns={COLUMN: numeric}')") from None

    def frames(self, columns: list[str], shard: int = 0, n_shards: int = 1,
               order: np.ndarray | None = None) -> Iterator[tuple[int, Any]]:
        """Fragments as pandas DataFrames, typed as the in-memory readers type them (a raw table's rows): Parquet
        row groups through ``to_pandas``, a CSV file in chunks of ``block_rows`` rows through ``pandas.read_csv``
        (so a column's empty cells, words and numbers read as they do when the file fits in memory)."""
        if self.parquet:
            for first, frag in self.fragments(columns, shard, n_shards, order):
                yield first, frag.to_pandas()
            return
        import pandas as pd

        first = 0
        try:
            chunks = pd.read_csv(self.path, sep=self.delimiter, usecols=columns, chunksize=self.block_rows)
            for i, chunk in enumerate(chunks):
                if i % n_shards == shard:
                    yield first, chunk.reset_index(drop=True)[columns]
                first += len(chunk)
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{self.path}: cannot parse near {row_label(first, csv=True)}: {exc}") from None


@dataclass
class StreamSpec:
    """How to turn a table into ``(x, y)``: feature and target columns, task and split fractions."""

    features: list[str]
    target: str
    task: str
    classes: list[str] | None
    seed: int
    val_fraction: float
    test_fraction: float
    #: a raw table's fitted preprocessing (:class:`~trainforge.training.tabular.TablePrep`): each fragment's
    #: rows are encoded through it (``None``: numeric features read as they are)
    prep: Any = None


def _shard() -> tuple[int, int]:
    """(this reader's shard, number of shards) over DDP ranks x DataLoader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = torch.utils.data.get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world * nw


class StreamingSplit(torch.utils.data.IterableDataset):
    """One split of a streamed table, yielding ready-made batches ``(x float32 (B, F), y)``.

    ``iter_batches`` is what :func:`trainforge.training.data.batches` calls: the split batches itself (no per-row
    collation). Iterating the dataset directly (e.g. a DataLoader with ``batch_size=None`` and workers)
    yields batches of ``batch_size`` rows too.
    """

    def __init__(self, table: Table, spec: StreamSpec, split: str, batch_size: int = 1024,
                 shuffle_buffer: int = 65536) -> None:
        super().__init__()
        self.table, self.spec, self.split = table, spec, split
        self.batch_size, self.shuffle_buffer = batch_size, shuffle_buffer
        self._shuffle, self._epoch_seed = False, 0

    def iter_batches(self, batch_size: int, shuffle: bool = False,
                     generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if shuffle else 0
        yield from self._iterate(batch_size, shuffle, seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._iterate(self.batch_size, self._shuffle, self._epoch_seed)

    def rows(self, shard: int, n_shards: int, rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(x, y)`` numpy blocks of this split in this shard, fragment by fragment."""
        spec, code = self.spec, SPLIT_CODES[self.split]
        order = None
        if rng is not None and self.table.parquet:
            import pyarrow.parquet as pq

            order = rng.permutation(pq.ParquetFile(self.table.path).num_row_groups)
        if spec.prep is not None:
            yield from self._raw_rows(shard, n_shards, order)
            return
        for first, frag in self.table.fragments([*spec.features, spec.target], shard, n_shards, order):
            keep = split_codes(np.arange(first, first + frag.num_rows), spec.seed, spec.val_fraction,
                               spec.test_fraction) == code
            if not keep.any():
                continue
            x = np.column_stack([frag.column(c).to_numpy(zero_copy_only=False) for c in spec.features])
            x = x.astype(np.float32, copy=False)[keep]
            if not np.isfinite(x).all():
                r, c = (int(i) for i in np.argwhere(~np.isfinite(x))[0])
                row = first + int(np.flatnonzero(keep)[r])
                raise DataError(f"{self.table.path}: {row_label(row, csv=not self.table.parquet)}, column "
                                f"{spec.features[c]!r}: NaN or missing feature")
            yield x, self._target(frag.column(spec.target).to_numpy(zero_copy_only=False)[keep])

    def _raw_rows(self, shard: int, n_shards: int, order: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """A raw table's fragments, this split's rows encoded by the fitted preprocessing."""
        spec, code = self.spec, SPLIT_CODES[self.split]
        for first, frame in self.table.frames([*spec.features, spec.target], shard, n_shards, order):
            keep = split_codes(np.arange(first, first + len(frame)), spec.seed, spec.val_fraction,
                               spec.test_fraction) == code
            if keep.any():
                rows = frame[keep]
                where = f"{self.table.path}: rows {first + 1}-{first + len(frame)}"
                yield spec.prep.transform(rows, where), self._target(rows[spec.target].to_numpy())

    def _target(self, raw: np.ndarray) -> np.ndarray:
        if self.spec.task == "classification":
            lookup = {c: i for i, c in enumerate(self.spec.classes or [])}
            try:
                return np.fromiter((lookup[str(v)] for v in raw), dtype=np.int64, count=len(raw))
            except KeyError as exc:
                raise DataError(f"{self.table.path}: label {exc.args[0]!r} not seen in the training rows") from None
        return raw.astype(np.float32).reshape(-1, 1)

    def _iterate(self, batch_size: int, shuffle: bool, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shard, n_shards = _shard()
        rng = np.random.default_rng([seed, shard]) if shuffle else None
        buf_x: list[np.ndarray] = []
        buf_y: list[np.ndarray] = []
        held = 0
        limit = max(self.shuffle_buffer, batch_size) if shuffle else batch_size
        for x, y in self.rows(shard, n_shards, rng):
            buf_x.append(x)
            buf_y.append(y)
            held += len(x)
            if held >= limit:
                bx, by = np.concatenate(buf_x), np.concatenate(buf_y)
                if rng is not None:
                    perm = rng.permutation(len(bx))
                    bx, by = bx[perm], by[perm]
                n_out = (len(bx) - (limit - batch_size if shuffle else 0)) // batch_size * batch_size
                for start in range(0, n_out, batch_size):
                    yield torch.from_numpy(bx[start:start + batch_size]), torch.from_numpy(by[start:start + batch_size])
                buf_x, buf_y, held = [bx[n_out:]], [by[n_out:]], len(bx) - n_out
        if held:
            bx, by = np.concatenate(buf_x), np.concatenate(buf_y)
            if rng is not None:
                perm = rng.permutation(len(bx))
                bx, by = bx[perm], by[perm]
            for start in range(0, len(bx), batch_size):
                yield torch.from_numpy(bx[start:start + batch_size]), torch.from_numpy(by[start:start + batch_size])


def stream_spec(path: str | Path, target: str | None, features: list[str] | None, task: str,
                split: dict[str, Any], delimiter: str = ",") -> tuple[Table, StreamSpec]:
    """The table and its :class:`StreamSpec` (target default: the last column; features: every other column).
    Raises :class:`DataError` for a missing file or column."""
    table = Table(path, delimiter=delimiter)
    target = target or table.columns[-1]
    if target not in table.columns:
        raise DataError(f"{path}: no target column {target!r}; columns: {', '.join(table.columns)}")
    features = list(features or [c for c in table.columns if c != target])
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(missing)}; columns: {', '.join(table.columns)}")
    return table, StreamSpec(features, target, task, None, int(split["seed"]), float(split["val_fraction"]),
                             float(split["test_fraction"]))


def open_table(path: str | Path, target: str | None, features: list[str] | None, task: str,
               split: dict[str, Any], name: str = "stream", delimiter: str = ",") -> Any:
    """Stream a table of numeric features: one pass for statistics and labels, then a :class:`DataBundle` of
    streamed splits (a raw table streams through :func:`trainforge.training.streaming_tabular.open_stream`).

    ``split`` holds ``seed``, ``val_fraction`` and ``test_fraction``. Raises :class:`DataError` for a
    missing file or column, non-numeric features or NaN.
    """
    from trainforge.contracts import DataBundle, DataMeta

    table, spec = stream_spec(path, target, features, task, split, delimiter)
    features, target = spec.features, spec.target
    # One pass over the training rows: float64 sums for mean/std, the label set, the row counts.
    n, s, ss, labels, sizes = 0, 0.0, 0.0, set(), {"train": 0, "val": 0, "test": 0}
    for first, frag in table.fragments([*features, target]):
        codes = split_codes(np.arange(first, first + frag.num_rows), spec.seed, spec.val_fraction,
                            spec.test_fraction)
        for k, c in SPLIT_CODES.items():
            sizes[k] += int((codes == c).sum())
        try:
            x = np.column_stack([frag.column(c).to_numpy(zero_copy_only=False) for c in features]).astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: rows {first + 1}-{first + frag.num_rows}: non-numeric feature ({exc})") from None
        x = x[codes == 0]
        n, s, ss = n + len(x), s + x.sum(0), ss + (x * x).sum(0)
        y = frag.column(target).to_numpy(zero_copy_only=False)
        if task != "regression":
            labels.update(map(str, np.unique(y.astype(str) if y.dtype == object else y)))
            if task == "auto" and len(labels) > 50:
                task = "regression"
    if n == 0:
        raise DataError(f"{path}: no training rows")
    task = "classification" if task == "auto" else task
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    std[std < 1e-8] = 1.0
    spec.task = task
    if task == "classification":
        spec.classes = sorted(labels, key=lambda v: (float(v) if _numeric(v) else float("inf"), v))
    meta = DataMeta(dataset=name, task=task, input_shape=(len(features),),
                    output_dim=len(spec.classes) if spec.classes else 1, class_names=spec.classes,
                    feature_names=features, mean=mean.astype(np.float32), std=std.astype(np.float32),
                    sizes=sizes, source=str(path))
    if task == "regression":  # target statistics from a second, target-only pass
        tn, ts, tss = 0, 0.0, 0.0
        for first, frag in table.fragments([target]):
            codes = split_codes(np.arange(first, first + frag.num_rows), spec.seed, spec.val_fraction,
                                spec.test_fraction)
            t = frag.column(target).to_numpy(zero_copy_only=False).astype(np.float64)[codes == 0]
            tn, ts, tss = tn + len(t), ts + t.sum(), tss + (t * t).sum()
        tm = ts / tn
        meta.target_mean = np.array([tm], np.float32)
        meta.target_std = np.array([max(np.sqrt(max(tss / tn - tm * tm, 0.0)), 1e-8)], np.float32)
    parts = {k: StreamingSplit(table, spec, k) for k in SPLIT_CODES}
    return DataBundle(parts["train"], parts["val"], parts["test"], meta)


def is_raw(table: Table, features: list[str]) -> bool:
    """Whether the features need a raw table's cleaning: a feature that is not a number or bool column, or
    has empty cells (null counts of every Parquet row group; the first CSV block, whose types pyarrow infers
    for the whole file: a column with empty cells or words only further down fails with one line naming
    the row, and streams as a raw table once ``dataset.columns`` declares it)."""
    import pyarrow as pa

    def plain(kind: Any) -> bool:
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)

    if table.parquet:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(table.path)
        schema = pf.schema_arrow
        if not all(plain(schema.field(c).type) for c in features):
            return True
        for g in range(pf.num_row_groups):
            group = pf.metadata.row_group(g)
            for c in features:
                stats = group.column(schema.get_field_index(c)).statistics
                if stats is not None and stats.has_null_count:
                    nulls = stats.null_count
                else:  # written without statistics: read the column of that row group
                    nulls = pf.read_row_group(g, columns=[c]).column(0).null_count
                if nulls > 0:
                    return True
        return False
    _, head = next(table.fragments(features), (0, None))
    return head is not None and any(not plain(head.schema.field(c).type) or head.column(c).null_count > 0
                                    for c in features)


def _numeric(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True
