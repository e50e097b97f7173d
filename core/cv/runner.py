"""``cross_validate(...)``: ``trainforge train --cv K`` as one Python call.

One parent run (``trainforge.role=cv``) with a child run per fold (``role=fold``, ``trainforge.fold=i``) and a
child run of the final model (``role=refit``):

1. the folds: :func:`trainforge.training.folds.load_folds` (the test split drawn first, as a plain run does);
2. each fold is a plain :func:`trainforge.run.api.train` run on its fold bundle, without export;
3. the parent logs ``cv_<metric>_mean``/``cv_<metric>_std`` of every validation metric at each fold's best
   epoch, ``fold<i>_<metric>``, and ``folds.json`` (the row indices of the test split and of every fold);
4. the final model is refit on all non-test rows for the median best epoch of the folds (patience off: there
   is no held-out row left to stop on), exported through the same gate, and its ``test_*`` metrics are logged
   on the parent beside the CV mean and std. A test score more than 2 standard deviations from the CV mean is
   warned about (the test split or the folds are not like each other).

Why a refit and not a fold ensemble: one model is what the ONNX gate, ``predict`` and the registry take; it has
seen every non-test row (each fold model saw (K-1)/K of them); and K models would cost K times the latency.
The fold runs stay in the store for anyone who wants their spread.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.contracts import TrainResult
from trainforge.run.options import RunOptions
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

#: a refit test score this many CV standard deviations from the CV mean is warned about
WARN_SIGMAS = 2.0


@dataclass
class CVResult:
    """What ``train --cv K`` produced: the parent run, each fold's run and scores, the CV summary, the refit."""

    run_id: str
    experiment_id: str
    kind: str
    folds: list[dict[str, Any]]
    metrics: dict[str, float]
    refit: TrainResult | None = None
    warning: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def fold_scores(self, metric: str) -> list[float]:
        """The K values of ``metric`` (e.g. ``val_accuracy``), in fold order."""
        return [float(f["metrics"][metric]) for f in self.folds]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "cv_kind": self.kind,
                "folds": self.folds, "metrics": self.metrics, "warning": self.warning,
                "fit_seconds": round(self.seconds, 3),
                "refit": self.refit.to_dict() if self.refit is not None else None,
                "onnx_path": self.refit.onnx_path if self.refit is not None else None}


def cross_validate(options: RunOptions, *, on_start: Any = None, fold_data: Any = None) -> CVResult:
    """K-fold cross-validation (K = ``options.folds``) of the resolved config ``options.config`` (see the
    module doc), then the refit.

    ``options``: the run's :class:`~trainforge.run.options.RunOptions` (``RunOptions.resolve(..., folds=K)``,
    as ``trainforge train --cv K`` resolves them); read here: ``config``, ``folds``, ``tracking_uri``,
    ``experiment``, ``run_name``, ``parent_run_id`` (nest the cv parent run under this run: ``compare``),
    ``tags``, ``export`` and ``quiet``. ``fold_data``: pre-loaded :class:`~trainforge.training.folds.FoldData`
    (``compare`` loads the folds once for every model). ``on_start``: called with the parent run id once it
    exists. Raises :class:`ConfigError` for K < 2 or data that cannot be folded; the parent run ends FAILED
    (KILLED on Ctrl-C) with the error.
    """
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    from trainforge.run.api import seed_everything
    from trainforge.tracking import store as tracking
    from trainforge.tracking.stale import process_tags
    from trainforge.training.folds import load_folds
    from trainforge.training.modeling import check_compatible, choose_task

    cfg, k = options.config, int(options.folds or 0)
    experiment_id = tracking.setup(options.tracking_uri, options.experiment)
    seed_everything(int(cfg["trainer"]["seed"]))
    if fold_data is None:
        task = choose_task(cfg["model"]["name"], cfg["dataset"]["name"])
        fold_data = load_folds(cfg["dataset"], cfg["trainer"], k, task=task)
    check_compatible(cfg["model"], fold_data.refit.meta)  # before any run is opened
    name = options.run_name or f"{cfg['model']['name']}-{cfg['dataset']['name']}-cv{len(fold_data.folds)}"
    run_tags = {tag.COMMAND: "train", tag.ROLE: "cv", tag.CV_FOLDS: str(len(fold_data.folds)),
                tag.CV_KIND: fold_data.folds.kind, tag.DATASET: cfg["dataset"]["name"], **process_tags(),
                **options.tags}
    if options.parent_run_id:
        run_tags["mlflow.parentRunId"] = options.parent_run_id
    run_id = MlflowClient().create_run(experiment_id, run_name=name, tags=resolve_tags(run_tags)).info.run_id
    if on_start is not None:
        on_start(run_id)
    try:
        with tracking.run_status(run_id):
            return _run_folds(fold_data, run_id, experiment_id, name, options)
    except KeyboardInterrupt as exc:
        exc.run_id = run_id
        raise


def _run_folds(fold_data: Any, run_id: str, experiment_id: str, name: str, options: RunOptions) -> CVResult:
    """The folds, the parent's summary and the refit (steps 2-4 of the module doc) of ``options.config``
    inside the open parent, each fold and the refit a child run in the parent's store and experiment."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from trainforge.cv.stats import summarize
    from trainforge.run.api import train
    from trainforge.tracking import runlog

    cfg = options.config
    runlog.log_params(run_id, cfg, fold_data.refit.meta)
    mlflow.log_params({"cv.folds": len(fold_data.folds), "cv.kind": fold_data.folds.kind}, run_id=run_id)
    folds, seconds = [], 0.0
    where = {"tracking_uri": options.tracking_uri, "experiment": options.experiment, "quiet": options.quiet,
             "parent_run_id": run_id}
    for i, bundle in enumerate(fold_data.bundles):
        result = train(cfg, data=bundle, run_name=f"{name}-fold{i}", export=False,
                       tags={tag.ROLE: "fold", tag.FOLD: str(i)}, **where)
        folds.append({"fold": i, "run_id": result.run_id, "best_epoch": result.best_epoch,
                      "metrics": best_val_metrics(result), "rows": {"train": len(bundle.train),
                                                                   "val": len(bundle.val)}})
        seconds += result.seconds
    metrics = summarize([f["metrics"] for f in folds])
    per_fold = {f"fold{f['fold']}_{key}": value for f in folds for key, value in f["metrics"].items()}
    mlflow.log_metrics({**metrics, **per_fold}, run_id=run_id)
    with tempfile.TemporaryDirectory(prefix="trainforge-cv-") as tmp:
        path = Path(tmp) / "folds.json"
        path.write_text(json.dumps(fold_data.folds.to_dict()))
        mlflow.log_artifact(str(path), run_id=run_id)

    refit_cfg = refit_config(cfg, [f["best_epoch"] for f in folds])
    refit = train(refit_cfg, data=fold_data.refit, run_name=f"{name}-refit", export=options.export,
                  tags={tag.ROLE: "refit"}, **where)
    test = dict(refit.metrics)
    mlflow.log_metrics({**test, "refit_epochs": int(refit_cfg["trainer"]["epochs"])}, run_id=run_id)
    MlflowClient().set_tag(run_id, tag.REFIT_RUN_ID, refit.run_id)
    warning = test_warning(cfg["trainer"]["monitor"], metrics, test)
    if warning:
        log.warning(warning)
    return CVResult(run_id, experiment_id, fold_data.folds.kind, folds, {**metrics, **test}, refit, warning,
                    seconds + refit.seconds)


def best_val_metrics(result: TrainResult) -> dict[str, float]:
    """The ``val_*`` metrics of ``result``'s best epoch (its history row; an estimator has one row)."""
    if not result.history:
        return {}
    row = result.history[max(result.best_epoch, 1) - 1]
    return {key: float(value) for key, value in row.items() if key.startswith("val_")}


def median_epoch(best_epochs: list[int]) -> int:
    """The median of the folds' best epochs, rounded half up, at least 1 (the refit's epoch count)."""
    return max(1, math.floor(float(np.median(best_epochs)) + 0.5)) if best_epochs else 1


def refit_config(cfg: dict[str, Any], best_epochs: list[int]) -> dict[str, Any]:
    """``cfg`` for the refit on all non-test rows: ``trainer.epochs`` = the median of the folds' best epochs
    (rounded half up, at least 1), early stopping off."""
    out = copy.deepcopy(cfg)
    out["trainer"]["epochs"] = median_epoch(best_epochs)
    out["trainer"]["patience"] = 0
    return out


def test_warning(monitor: str, cv_metrics: dict[str, float], test: dict[str, float]) -> str | None:
    """A line when the refit's test score lies more than :data:`WARN_SIGMAS` CV standard deviations from the
    CV mean of the monitored metric (``val_loss`` -> ``test_loss``); ``None`` otherwise."""
    base = monitor.removeprefix("val_")
    mean, std = cv_metrics.get(f"cv_{monitor}_mean"), cv_metrics.get(f"cv_{monitor}_std")
    value = test.get(f"test_{base}")
    if mean is None or std is None or value is None or not math.isfinite(value):
        return None
    if abs(value - mean) <= WARN_SIGMAS * std:
        return None
    return (f"the refit model's test_{base} {value:.4g} lies {abs(value - mean) / std if std else math.inf:.1f} "
            f"standard deviations from the CV mean {mean:.4g} ± {std:.2g}: the test split is unlike the folds "
            "(few rows, or a shift between them)")
