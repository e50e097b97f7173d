"""The data path: load through a dataset plugin, validate, split, batch.

In-memory splits are batched by index (one ``randperm`` per epoch and one gather per batch), not by
per-sample collation through a ``DataLoader``: for small models the collation is most of the time
(see ``benchmarks/``). Any other ``torch.utils.data.Dataset`` (map-style or iterable, e.g. a
streaming reader) goes through a ``DataLoader``, so a ``DistributedSampler`` can slot in there.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from trainforge import manager
from trainforge.contracts import DataBundle, DataMeta, TensorSplit
from trainforge.errors import ConfigError, DataError
from trainforge.specs import ArrayData, TableFile

SPLIT_KEYS = ("val_fraction", "test_fraction")

log = logging.getLogger(__name__)


def batches(
    split: Any, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches.

    ``TensorSplit`` is gathered by index; a split with ``iter_batches`` (e.g. a streamed table) batches
    itself; any other torch Dataset goes through a DataLoader (where a DistributedSampler can slot in).
    """
    if isinstance(split, TensorSplit):
        from trainforge.training.distributed import world

        rank, size = world()
        if shuffle:
            order = torch.randperm(len(split), generator=generator).to(split.x.device)
            if size > 1:  # every rank draws the same permutation and takes its own interleaved shard
                order = order[rank::size]
            n = len(order)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield split.x[idx], split.y[idx]
        else:
            x, y = (split.x[rank::size], split.y[rank::size]) if size > 1 else (split.x, split.y)
            for start in range(0, len(x), batch_size):
                yield x[start : start + batch_size], y[start : start + batch_size]
        return
    if hasattr(split, "iter_batches"):  # a split that batches itself (streamed tables: no per-row collation)
        yield from split.iter_batches(batch_size, shuffle=shuffle, generator=generator)
        return
    loader = torch.utils.data.DataLoader(
        split,
        batch_size=batch_size,
        shuffle=shuffle and not isinstance(split, torch.utils.data.IterableDataset),
        generator=generator,
    )
    yield from loader


def load(dataset_config: dict[str, Any], trainer_config: dict[str, Any], task: str | None = None) -> DataBundle:
    """Load the configured dataset, validate it and split it (seeded; stratified for classification).

    ``task``: the task to build targets for (e.g. ``"reconstruction"`` on digits, see
    :func:`trainforge.training.modeling.choose_task`); ``None`` keeps the data's own task. Raises
    :class:`DataError` for non-finite or malformed data, :class:`ConfigError` for bad split settings.
    """
    name = dataset_config["name"]
    spec = manager.get("dataset", name)
    params = {k: v for k, v in dataset_config.items() if k != "name"}
    if "split" in inspect.signature(spec.load).parameters:
        params["split"] = {k: trainer_config[k] for k in (*SPLIT_KEYS, "seed")}
    result = spec.load(**params)
    if isinstance(result, TableFile):  # too large for memory: stream it (needs the split settings)
        from trainforge.training.streaming_tabular import open_stream

        split = params.get("split") or {k: trainer_config[k] for k in (*SPLIT_KEYS, "seed")}
        return open_stream(result.path, result.target, result.features, result.task, split, name=name,
                           delimiter=result.delimiter, columns=result.columns, impute=result.impute)
    if isinstance(result, DataBundle):
        return result
    if not isinstance(result, ArrayData):
        raise TypeError(f"dataset {name!r}: load() returned {type(result).__name__}, expected ArrayData")
    return split_arrays(name, result, trainer_config, task=task)


def target_kind(task: str) -> str:
    """How ``task`` builds its targets (``TaskSpec.target``): label, value, input or none."""
    return manager.get("task", task).target


def validate(name: str, data: ArrayData) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, dtypes and finiteness; return ``(features float32, target)``.

    The target is checked as the data's own task (``data.task``) defines it: int class indices for
    ``label`` tasks, finite floats for ``value`` tasks; ``input``/``none`` tasks ignore it.
    """
    where = data.source or f"dataset {name!r}"
    try:
        x = np.asarray(data.features, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: features are not numeric ({exc})") from None
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(f"{where}: features must have shape (N, ...) with N > 0, got {x.shape}")
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        col_name = data.feature_names[col] if data.feature_names and col < len(data.feature_names) else col + 1
        raise DataError(
            f"{where}: row {row + 1}, column {col_name!r}: feature is NaN or infinite "
            f"({int(bad.sum())} such values); clean or impute the data first"
        )
    kind = target_kind(data.task)
    if kind in ("input", "none"):
        return x, np.zeros((len(x), 0), dtype=np.float32)
    y = np.asarray(data.target)
    if len(y) != len(x):
        raise DataError(f"{where}: {len(x)} feature rows but {len(y)} targets")
    if kind == "label":
        y = y.astype(np.int64)
        k = len(data.class_names) if data.class_names else int(y.max()) + 1
        if y.min() < 0 or y.max() >= k:
            raise DataError(f"{where}: class indices must lie in [0, {k}), got [{y.min()}, {y.max()}]")
    else:
        y = y.astype(np.float32)
        if not np.isfinite(y).all():
            row = int(np.argwhere(~np.isfinite(y.reshape(len(y), -1)))[0][0])
            raise DataError(f"{where}: row {row + 1}: target is NaN or infinite")
    return x, y


def split_indices(name: str, n: int, y: np.ndarray, stratify: bool, trainer_config: dict[str, Any],
                  ordered: bool = False, gap: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train, val and test.

    Shuffled and seeded by default (stratified by ``y`` when ``stratify``); with ``ordered`` the split
    is chronological: the first rows train, the next validate, the last test, never shuffled, with
    ``gap`` rows dropped before val and before test so no target of one split lies in the next.
    """
    from sklearn.model_selection import train_test_split

    seed = int(trainer_config["seed"])
    test_frac, val_frac = float(trainer_config["test_fraction"]), float(trainer_config["val_fraction"])
    idx = np.arange(n)
    if ordered:
        n_test, n_val = max(1, round(n * test_frac)), max(1, round(n * val_frac))
        n_train = n - n_test - n_val - 2 * int(gap)
        if n_train < 1:
            raise ConfigError(f"dataset {name!r}: {n} rows are too few for a chronological split "
                              f"({n_val} val, {n_test} test, gap {gap})")
        val_start = n_train + int(gap)
        return idx[:n_train], idx[val_start:val_start + n_val], idx[n - n_test:]
    strat = y if stratify else None
    try:
        rest, test = train_test_split(idx, test_size=test_frac, random_state=seed, stratify=strat)
        strat_rest = y[rest] if strat is not None else None
        train, val = train_test_split(
            rest, test_size=val_frac / (1.0 - test_frac), random_state=seed, stratify=strat_rest
        )
    except ValueError as exc:  # e.g. a class with a single member cannot be stratified
        raise ConfigError(f"dataset {name!r}: cannot split {n} rows: {exc}") from None
    return train, val, test


def split_arrays(name: str, data: ArrayData, trainer_config: dict[str, Any], task: str | None = None,
                 rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> DataBundle:
    """Train/val/test split and train-only standardization; targets built for ``task`` (default: the data's).

    The split depends only on the rows, the data's own task and the seed: seeded and stratified when
    the data has class labels (also when an autoencoder uses them), chronological when ``data.ordered``.
    ``rows``: the train, val and test row indices to use instead (a cross-validation fold, see
    :mod:`trainforge.training.folds`). Raises :class:`DataError` when ``task`` needs targets the data
    does not have.
    """
    prep, report = None, {}
    if data.table is not None:
        data, prep, report = encode_table(name, data, trainer_config)
    x, y = validate(name, data)
    natural, task = target_kind(data.task), task or data.task
    kind = target_kind(task)
    if natural == "label" and not data.ordered and rows is None:
        _check_class_counts(name, y, data.class_names)
    train, val, test = rows if rows is not None else split_indices(
        name, len(x), y, natural == "label", trainer_config, ordered=data.ordered, gap=data.gap)
    mean, std = standardization(x[train], data.layout)
    _check_constant(name, x[train], data.feature_names)
    target_mean = target_std = None
    if kind in ("label", "value") and kind != natural:
        raise DataError(f"dataset {name!r} ({data.task}) has no {kind} targets for the {task} task")
    if kind in ("input", "none"):
        output_dim, class_names = int(np.prod(x.shape[1:])), None
        y = x if kind == "input" else np.zeros((len(x), 0), dtype=np.float32)
        target_mean, target_std = mean, std  # outputs live in input units
    elif kind == "label":
        output_dim = len(data.class_names) if data.class_names else int(y.max()) + 1
        class_names = data.class_names or [str(i) for i in range(output_dim)]
        if y.ndim != 1:
            raise DataError(f"dataset {name!r}: classification targets must have shape (N,)")
    else:
        output_dim = 1 if y.ndim == 1 else int(y.shape[1])
        class_names = None
        y = y.reshape(len(y), output_dim)
        target_mean, target_std = standardization(y[train])
    meta = DataMeta(
        dataset=name,
        task=task,
        input_shape=tuple(int(d) for d in x.shape[1:]),
        output_dim=output_dim,
        class_names=[str(c) for c in class_names] if class_names else None,
        feature_names=list(data.feature_names) if data.feature_names else None,
        mean=mean,
        std=std,
        sizes={"train": len(train), "val": len(val), "test": len(test)},
        source=data.source,
        target_mean=target_mean,
        target_std=target_std,
        table=prep,
        report=report,
    )

    def part(rows: np.ndarray) -> TensorSplit:
        return TensorSplit(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]))

    return DataBundle(part(train), part(val), part(test), meta)


def encode_table(name: str, data: ArrayData, trainer_config: dict[str, Any]) -> tuple[ArrayData, Any, dict[str, Any]]:
    """A raw table's rows as encoded float32 features: duplicates dropped (unless ``data.drop_duplicates`` is
    false), the preprocessing fitted on the training rows of the split :func:`split_arrays` then draws
    (the same seed and rows give the same split), every row transformed.

    Returns the encoded :class:`ArrayData`, the fitted :class:`~trainforge.training.tabular.TablePrep`
    (holding the raw held-out rows in ``heldout``, the raw validation rows in ``validation``) and the data report.
    """
    import dataclasses

    import pandas as pd

    from trainforge.training.tabular import fit_table

    table = data.table.reset_index(drop=True)
    target = np.asarray(data.target)
    report: dict[str, Any] = {"rows_read": len(table), "duplicates_dropped": 0}
    if data.drop_duplicates:
        keyed = table.assign(__target__=target.tolist() if target.ndim > 1 else target)
        keep = ~keyed.duplicated().to_numpy()
        report["duplicates_dropped"] = int((~keep).sum())
        if keep.sum() < 2:
            raise DataError(f"{data.source or name}: its {len(table)} rows are copies of {int(keep.sum())} distinct row(s); "
                            "exact duplicates are dropped before the split, so nothing is left to split "
                            "(-p dataset.drop_duplicates=false keeps them)")
        if report["duplicates_dropped"]:
            log.warning("%s: %d exact duplicate row(s) dropped before the split (-p dataset.drop_duplicates=false "
                        "keeps them)", data.source or name, report["duplicates_dropped"])
        table, target = table[keep].reset_index(drop=True), target[keep]
    natural = target_kind(data.task)
    if natural == "label" and not data.ordered:
        _check_class_counts(name, target.astype(np.int64), data.class_names)
    train, val, test = split_indices(name, len(table), target, natural == "label", trainer_config,
                                     ordered=data.ordered, gap=data.gap)
    prep = fit_table(table.iloc[train], data.columns, data.impute)
    hashes = pd.util.hash_pandas_object(table, index=False).to_numpy()
    report["test_rows_in_train"] = int(np.isin(hashes[test], hashes[train]).sum())
    if report["test_rows_in_train"]:
        log.warning("%s: %d test row(s) are identical to a training row (features)", data.source or name,
                    report["test_rows_in_train"])
    report["columns"] = [c.to_dict() for c in prep.columns]
    prep.heldout = table.iloc[test].reset_index(drop=True)
    prep.validation = table.iloc[val].reset_index(drop=True)
    x = prep.transform(table, data.source or name)
    encoded = dataclasses.replace(data, features=x, target=target, table=None, feature_names=prep.feature_names)
    return encoded, prep, report


def _check_class_counts(name: str, y: np.ndarray, class_names: list[Any] | None) -> None:
    """A stratified split needs two rows of every class; the error names the class by its label."""
    counts = np.bincount(y.astype(np.int64), minlength=len(class_names or []))
    lonely = [int(i) for i in np.flatnonzero(counts == 1)]
    if lonely:
        labels = ", ".join(repr(str(class_names[i]) if class_names and i < len(class_names) else str(i))
                           for i in lonely[:5])
        raise DataError(f"dataset {name!r}: class {labels} has a single row; a stratified train/val/test split "
                        "needs at least 2 rows of each class (drop that class or add rows)")


def constant_features(x: np.ndarray, feature_names: list[str] | None) -> list[str]:
    """Names (else ``column N`` from 1) of the columns of tabular ``(N, D)`` features that never change;
    ``[]`` for other shapes (images are standardized per channel: constant border pixels are normal)."""
    if x.ndim != 2 or len(x) < 2:
        return []
    return [feature_names[i] if feature_names and i < len(feature_names) else f"column {i + 1}"
            for i in np.flatnonzero(np.ptp(x, axis=0) == 0)]


def _check_constant(name: str, x: np.ndarray, feature_names: list[str] | None) -> None:
    """Warn about feature columns constant on the training split; all constant is a DataError."""
    names = constant_features(x, feature_names)
    if not names:
        return
    if len(names) == x.shape[1]:
        raise DataError(f"dataset {name!r}: every feature column is constant on the training split; nothing to learn")
    log.warning("dataset %r: %d feature column(s) constant on the training split, they carry no information: %s",
                name, len(names), ", ".join(map(str, names[:10])) + (" ..." if len(names) > 10 else ""))


def standardization(x: np.ndarray, layout: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of training features: per feature for vectors, per channel for ``(N, C, ...)`` images,
    per feature ``F`` over all steps for ``layout="sequence"`` windows ``(N, T, F)``.

    A constant feature gets std 1 so it passes through unscaled instead of dividing by zero.
    """
    if layout == "sequence":
        axes: tuple[int, ...] = tuple(range(x.ndim - 1))
    else:
        axes = (0,) if x.ndim == 2 else (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)[0].astype(np.float32)
    std = x.std(axis=axes, keepdims=True)[0].astype(np.float32)
    std[std < 1e-8] = 1.0
    return mean, std


def sample_rows(split: Any, n: int = 256) -> np.ndarray:
    """The first ``n`` feature rows of a split as float32 numpy ``(n, *input_shape)`` (export parity checks)."""
    if isinstance(split, TensorSplit):
        return split.x[:n].detach().cpu().numpy()
    for x, _ in batches(split, n):
        return x.detach().cpu().numpy()
    raise DataError("the split is empty")


def write_split(bundle: DataBundle, split: str, output: str, target_column: str = "target") -> int:
    """Write a split's raw features (flattened, named by ``feature_names``) and target to CSV or Parquet.

    Classification targets are written as class labels. Returns the number of rows written. The file is
    written to a temporary name and renamed (:func:`trainforge.atomic.atomic_output`).
    """
    import pandas as pd

    part = getattr(bundle, split, None)
    if not isinstance(part, TensorSplit):
        raise ConfigError(f"split {split!r} is not an in-memory split; choose train, val or test")
    meta = bundle.meta
    x = part.x.cpu().numpy().reshape(len(part), -1)
    names = meta.feature_names if meta.feature_names and len(meta.feature_names) == x.shape[1] else \
        [f"x{i}" for i in range(x.shape[1])]
    frame = pd.DataFrame(x, columns=names)
    y = part.y.cpu().numpy()
    if meta.task == "classification":
        frame[target_column] = np.asarray(meta.class_names, dtype=object)[y]
    elif y.shape[1] == 1:
        frame[target_column] = y[:, 0]
    else:
        for i in range(y.shape[1]):
            frame[f"{target_column}_{i}"] = y[:, i]
    from trainforge.atomic import atomic_output

    with atomic_output(output) as tmp:  # an existing file is replaced only by a complete one
        if output.lower().endswith((".parquet", ".pq")):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return len(frame)
