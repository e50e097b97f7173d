"""Cross-validation folds: K train/val splits over the rows the test split leaves.

The test split is drawn first, exactly as a plain run draws it (:func:`trainforge.training.data.split_indices`'s
first step: seeded, stratified for class labels, the last rows for time-ordered data), and is never in any fold.
The remaining rows are split by scikit-learn's splitters (https://scikit-learn.org/stable/modules/cross_validation.html):

- ``stratified``: ``StratifiedKFold(shuffle=True, random_state=seed)`` when the data has class labels: every
  fold's class counts are within one row of the whole's proportions;
- ``group``: ``GroupKFold`` when ``dataset.groups`` names a feature column (no group in two folds; the column
  is dropped from the features: it identifies rows, it is not an input);
- ``forward``: ``TimeSeriesSplit(gap=data.gap)`` for time-ordered data (forecasting): each fold trains on
  the rows before its validation block, never after;
- ``kfold``: ``KFold(shuffle=True, random_state=seed)`` otherwise (regression).

Each fold is a :class:`~trainforge.contracts.DataBundle` whose standardization is fitted on its own training
rows (:func:`~trainforge.training.data.split_arrays`); the refit bundle trains on all non-test rows.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from trainforge import manager
from trainforge.contracts import DataBundle
from trainforge.errors import ConfigError, DataError
from trainforge.specs import ArrayData
from trainforge.training.data import SPLIT_KEYS, split_arrays, target_kind, validate

log = logging.getLogger(__name__)

FOLD_KINDS = ("stratified", "group", "forward", "kfold")


@dataclass
class Folds:
    """Row indices (into the dataset's rows, int64) of the test split, the non-test rows and each fold."""

    kind: str
    test: np.ndarray
    rest: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.folds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"kind", "test": [...], "folds": [{"train": [...], "val": [...]}, ...]}``."""
        return {"kind": self.kind, "test": self.test.tolist(),
                "folds": [{"train": t.tolist(), "val": v.tolist()} for t, v in self.folds]}


@dataclass
class FoldData:
    """The K fold bundles, the refit bundle (train on every non-test row) and the indices they came from."""

    folds: Folds
    bundles: list[DataBundle]
    refit: DataBundle


def make_folds(name: str, y: np.ndarray, k: int, trainer_config: dict[str, Any], *, stratify: bool,
               ordered: bool = False, gap: int = 0, groups: np.ndarray | None = None) -> Folds:
    """Draw the test split as a plain run does, then split the other rows into ``k`` folds (module doc).

    ``y``: the data's own targets ``(N,)`` (class indices when ``stratify``). Raises :class:`ConfigError`
    when ``k`` < 2 or the rows cannot be split into ``k`` folds (e.g. fewer rows of a class than folds).
    """
    from sklearn import model_selection as ms

    if k < 2:
        raise ConfigError(f"--cv {k}: cross-validation needs at least 2 folds")
    n, seed = len(y), int(trainer_config["seed"])
    test_frac = float(trainer_config["test_fraction"])
    idx = np.arange(n)
    try:
        if ordered:  # the last rows test, as split_indices does; `gap` rows before them are dropped
            n_test = max(1, round(n * test_frac))
            rest, test = idx[: max(0, n - n_test - int(gap))], idx[n - n_test:]
            kind, splitter = "forward", ms.TimeSeriesSplit(n_splits=k, gap=int(gap))
        else:
            rest, test = ms.train_test_split(idx, test_size=test_frac, random_state=seed,
                                             stratify=y if stratify else None)
            if groups is not None:
                kind, splitter = "group", ms.GroupKFold(n_splits=k)
            elif stratify:
                kind, splitter = "stratified", ms.StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            else:
                kind, splitter = "kfold", ms.KFold(n_splits=k, shuffle=True, random_state=seed)
        if kind == "stratified":
            counts = np.bincount(y[rest].astype(np.int64))
            fewest = int(counts[counts > 0].min())
            if fewest < k:
                raise ConfigError(f"dataset {name!r}: a class has {fewest} non-test row(s), fewer than the "
                                  f"{k} folds of --cv {k}; use fewer folds")
        parts = splitter.split(rest, y[rest] if stratify else None, groups[rest] if groups is not None else None)
        folds = [(rest[t], rest[v]) for t, v in parts]
    except ValueError as exc:  # too few rows or groups for k folds
        raise ConfigError(f"dataset {name!r}: cannot make {k} folds of {n} rows: {exc}") from None
    return Folds(kind, np.asarray(test), np.asarray(rest), folds)


def load_arrays(dataset_config: dict[str, Any], trainer_config: dict[str, Any]) -> tuple[ArrayData, np.ndarray | None]:
    """The dataset's rows before any split, and the ``dataset.groups`` column's values (``None`` without it).

    Raises :class:`ConfigError` for a dataset that splits itself or streams (cross-validation needs its rows
    in memory) and for a ``groups`` column the data does not have.
    """
    name = dataset_config["name"]
    spec = manager.get("dataset", name)
    group_column = dataset_config.get("groups")
    params = {k: v for k, v in dataset_config.items() if k not in ("name", "groups")}
    if "split" in inspect.signature(spec.load).parameters:
        params["split"] = {k: trainer_config[k] for k in (*SPLIT_KEYS, "seed")}
    result = spec.load(**params)
    if not isinstance(result, ArrayData):
        raise ConfigError(f"dataset {name!r} returns {type(result).__name__}, not in-memory rows: cross-validation "
                          "needs them (a streamed table or a dataset that splits itself cannot be folded)")
    if not group_column:
        return result, None
    names = list(result.feature_names or [])
    if group_column not in names:
        raise ConfigError(f"dataset.groups={group_column!r} is not a feature column of {name!r}"
                          + (f"; columns: {', '.join(names[:20])}" if names else ""))
    col = names.index(group_column)
    x = np.asarray(result.features)
    if x.ndim != 2:
        raise ConfigError(f"dataset.groups needs tabular (N, D) features; {name!r} has shape {x.shape}")
    groups = x[:, col].copy()
    kept = [i for i in range(x.shape[1]) if i != col]
    return replace(result, features=x[:, kept], feature_names=[names[i] for i in kept]), groups


def load_folds(dataset_config: dict[str, Any], trainer_config: dict[str, Any], k: int,
               task: str | None = None) -> FoldData:
    """Load the dataset and split it into ``k`` fold bundles plus the refit bundle (see the module doc).

    ``task``: the task whose targets the bundles carry (as :func:`trainforge.training.data.load`). The refit
    bundle's ``val`` split is its training rows (the refit trains a fixed number of epochs and has no
    held-out rows left; the test split stays unseen). Raises :class:`ConfigError` / :class:`DataError`.
    """
    data, groups = load_arrays(dataset_config, trainer_config)
    name = dataset_config["name"]
    _, y = validate(name, data)
    natural = target_kind(data.task)
    if natural not in ("label", "value") and y.shape[-1:] == (0,):
        y = np.zeros(len(data.features))
    stratify = natural == "label" and not data.ordered
    if stratify and np.bincount(y.astype(np.int64)).min(initial=2) < 2:
        raise DataError(f"dataset {name!r}: a class has a single row; stratified folds need at least 2 of each")
    folds = make_folds(name, y if y.ndim == 1 else y[:, 0], k, trainer_config, stratify=stratify,
                       ordered=data.ordered, gap=data.gap, groups=groups)
    bundles = [split_arrays(name, data, trainer_config, task=task, rows=(t, v, folds.test)) for t, v in folds.folds]
    refit = split_arrays(name, data, trainer_config, task=task, rows=(folds.rest, folds.rest, folds.test))
    log.info("dataset %r: %d %s folds of %d non-test rows; %d test rows", name, k, folds.kind, len(folds.rest),
             len(folds.test))
    return FoldData(folds, bundles, refit)
