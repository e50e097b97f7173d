"""What ``trainforge explain`` explains: the shipped ONNX file, the rows, and (from a run) the torch model or
scikit-learn estimator behind it, the training rows and a way to re-initialise the model.

The explained quantity is the served output: for classification the probability of each row's predicted
class (the ONNX ``probabilities`` output), for regression the first column of ``prediction`` in target
units. The torch side explains the same function: the model followed by the task's head
(:class:`~trainforge.training.modeling.InferenceModel`), which the export gate checked against the ONNX file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.errors import DataError, TrainforgeError

log = logging.getLogger(__name__)

#: the ONNX output each task's explanation reads
OUTPUTS = {"classification": "probabilities", "regression": "prediction"}
#: training rows kept as the pool backgrounds are drawn from
POOL_ROWS = 2000


@dataclass
class Subject:
    """A model to explain. ``x``: rows ``(N, *input_shape)`` float32 in raw input units; ``y``: their targets
    (class indices int64 ``(N,)`` or values ``(N, T)``) or None; ``pool``: rows backgrounds are drawn from (the
    training split, else ``x``); ``baseline``: the training mean ``input_shape`` (IG's baseline) or None.
    ``torch_model(seed)`` returns the torch model (``seed=None``: trained weights; else freshly initialised,
    seeded); ``refit(seed)`` returns a predict function of the estimator refitted on shuffled labels."""

    onnx_path: str
    meta: dict[str, Any]
    x: np.ndarray
    y: np.ndarray | None
    pool: np.ndarray
    run_id: str | None = None
    baseline: np.ndarray | None = None
    torch_model: Callable[[int | None], Any] | None = None
    refit: Callable[[int], Callable[[np.ndarray], np.ndarray]] | None = None
    model_kind: str = "onnx"

    @property
    def task(self) -> str:
        return str(self.meta.get("task", ""))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.meta["input_shape"][1:])

    @property
    def feature_names(self) -> list[str]:
        names = self.meta.get("feature_names") or []
        width = int(np.prod(self.input_shape))
        if len(names) == width:
            return [str(n) for n in names]
        if len(self.input_shape) == 3:  # (C, H, W) images: pixel names
            c, h, w = self.input_shape
            return [f"c{k}_r{i}_c{j}" if c > 1 else f"r{i}_c{j}" for k in range(c) for i in range(h) for j in range(w)]
        return [f"x{i}" for i in range(width)]


def load_subject(source: str, input_path: str | Path | None = None, target: str | None = None, *,
                 rows: int | None = None, tracking_uri: str | None = None, seed: int = 0) -> Subject:
    """The :class:`Subject` of ``source``: a run id, ``runs:/RUN_ID``, ``models:/...`` or an ``.onnx`` path.

    Rows are ``input_path`` (CSV/Parquet/.npy, ``target`` names its target column: the run's
    ``dataset.target`` by default) or the run's test split; ``rows`` keeps the first ``rows`` of them. An
    ``.onnx`` file whose run is not in the store needs ``input_path`` (no torch model, no training rows).
    Raises :class:`TrainforgeError` for an unknown run or file, a task other than classification/regression,
    or no rows to explain.
    """
    from trainforge.exporting.exporter import read_metadata
    from trainforge.exporting.sources import resolve_model

    if Path(source).suffix == ".onnx" or Path(source).is_file():
        onnx_path = resolve_model(source)
    else:
        onnx_path = resolve_model(source if source.startswith(("runs:/", "models:/")) else f"runs:/{source}",
                                  tracking_uri)
    meta = read_metadata(onnx_path)
    if meta.get("task") not in OUTPUTS:
        raise TrainforgeError(f"{source}: explain covers classification and regression models, not "
                              f"{meta.get('task') or 'this'} ({meta.get('model', 'unknown model')})")
    subject = Subject(onnx_path, meta, np.empty(0, np.float32), None, np.empty(0, np.float32))
    run_id = _store_run(meta.get("mlflow_run_id"), tracking_uri)
    if run_id:
        _attach_run(subject, run_id, seed)
    elif input_path is None:
        raise TrainforgeError(f"{source}: its run is not in this store; give the rows to explain with --input")
    if input_path is not None:
        subject.x, subject.y = _read_rows(input_path, meta, target or subject.meta.get("_target"))
        if subject.pool.size == 0:
            subject.pool = subject.x
    if rows is not None:
        subject.x = subject.x[:rows]
        subject.y = None if subject.y is None else subject.y[:rows]
    if len(subject.x) == 0:
        raise DataError(f"{source}: no rows to explain")
    return subject


def _store_run(run_id: Any, tracking_uri: str | None) -> str | None:
    """``run_id`` when the store holds that run, else None."""
    if not run_id:
        return None
    from trainforge.tracking import store as tracking

    tracking.setup_uri(tracking_uri)
    try:
        tracking.get_run(str(run_id))
    except TrainforgeError:
        return None
    return str(run_id)


def _attach_run(subject: Subject, run_id: str, seed: int) -> None:
    """Fill the run's test rows, training pool, baseline and model (torch or estimator) into ``subject``."""
    from trainforge.estimators.kind import split_arrays
    from trainforge.tracking import store as tracking
    from trainforge.tracking import tags as tag
    from trainforge.tracking.runconfig import run_config
    from trainforge.training import data as data_mod

    cfg = run_config(run_id)
    bundle = data_mod.load(cfg["dataset"], cfg["trainer"], task=subject.task)
    shape = subject.input_shape
    test_x, test_y = split_arrays(bundle.test)
    train_x, train_y = split_arrays(bundle.train)
    subject.run_id = run_id
    subject.x, subject.y = test_x.reshape(-1, *shape), test_y
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(train_x), min(POOL_ROWS, len(train_x)), replace=False)
    subject.pool = train_x[np.sort(keep)].reshape(-1, *shape)
    subject.baseline = train_x.mean(axis=0).reshape(shape).astype(np.float32)
    subject.meta["_target"] = cfg["dataset"].get("target")
    if tracking.get_run(run_id).data.tags.get(tag.FIT) == "estimator":
        subject.model_kind = "estimator"
        subject.refit = _estimator_refit(run_id, subject.task, train_x, train_y)
    else:
        subject.model_kind = "torch"
        subject.torch_model = _torch_factory(run_id)


def _torch_factory(run_id: str) -> Callable[[int | None], Any]:
    """``factory(None)``: the run's best-epoch model with its task head, in eval mode; ``factory(seed)``: the
    same architecture freshly initialised under ``torch.manual_seed(seed)`` (same input standardization)."""
    import torch

    from trainforge.tracking.checkpoints import fetch
    from trainforge.training.checkpoint import rebuild
    from trainforge.training.modeling import InferenceModel, build_model

    trained = rebuild(fetch(run_id))
    cfg, meta, task = trained.config, trained.meta, trained.task

    def factory(seed: int | None) -> Any:
        state = torch.random.get_rng_state()
        try:
            if seed is None:
                return InferenceModel(trained.model, task).eval()
            torch.manual_seed(seed)
            model = build_model(cfg["model"], meta)
        finally:
            torch.random.set_rng_state(state)
        return InferenceModel(model, task).eval()

    return factory


def _estimator_refit(run_id: str, task: str, train_x: np.ndarray,
                     train_y: np.ndarray) -> Callable[[int], Callable[[np.ndarray], np.ndarray]]:
    """``refit(seed)``: the run's estimator cloned and fitted on the training rows with their labels shuffled
    (Adebayo et al. 2018's data-randomisation test: a tree ensemble has no weights to re-initialise), as a
    predict function ``(N, D) -> (N, K)`` probabilities or ``(N, T)`` predictions."""
    from sklearn.base import clone

    from trainforge.estimators.kind import MODEL_FILE, load_estimator
    from trainforge.tracking import store as tracking

    fitted = load_estimator(tracking.download(run_id, MODEL_FILE))

    def refit(seed: int) -> Callable[[np.ndarray], np.ndarray]:
        estimator = clone(fitted)
        if "random_state" in estimator.get_params():
            estimator.set_params(random_state=seed)
        labels = np.random.default_rng(seed).permutation(train_y)
        estimator.fit(train_x, labels.ravel() if labels.ndim == 1 or labels.shape[1] == 1 else labels)
        if task == "classification":
            return lambda x: estimator.predict_proba(x.reshape(len(x), -1)).astype(np.float32)
        return lambda x: np.asarray(estimator.predict(x.reshape(len(x), -1)), np.float32).reshape(len(x), -1)

    return refit


def _read_rows(path: str | Path, meta: dict[str, Any], target: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of ``path`` as the model's input ``(N, *input_shape)`` float32, and their targets when the file
    has the ``target`` column (class names mapped to indices)."""
    from trainforge.exporting.predictor import read_chunks, to_features

    xs, ys, first = [], [], 0
    for chunk in read_chunks(path):
        has_target = target is not None and not isinstance(chunk, np.ndarray) and target in chunk.columns
        x, y = to_features(chunk, meta, target if has_target else None, Path(path), first)
        xs.append(x)
        if y is not None:
            ys.append(y)
        first += len(x)
    if not xs:
        raise DataError(f"{path}: no rows")
    x = np.concatenate(xs)
    if not ys:
        return x, None
    y = np.concatenate(ys)
    if meta.get("task") == "classification":
        names = [str(c) for c in meta.get("class_names") or []]
        labels = [str(v) for v in y]
        if names and set(labels) <= set(names):
            return x, np.asarray([names.index(v) for v in labels], np.int64)
        return x, y.astype(np.int64)
    return x, y.astype(np.float32).reshape(len(y), -1)
