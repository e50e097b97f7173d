"""``tune --cv K``: a trial scored by K-fold cross-validation, and the refit of the study's best configuration.

:func:`make_cv_fitter` is the :data:`~trainforge.tuning.objective.Fitter` that
:func:`~trainforge.tuning.objective.make_fitter` picks when the settings carry ``cv``. One trial is:

1. a child run of the study's parent (``STUDY-trial-N``, tag ``trainforge.cv_mode``: ``lockstep`` or
   ``sequential``) holding a child run per fold (``role=fold``, ``trainforge.fold=i``), on the folds of
   :func:`trainforge.training.folds.load_folds` (loaded once per worker; the test split is the one a plain
   ``tune`` holds out, and never in a fold);
2. the K fold models trained by :func:`trainforge.cv.lockstep.fit_folds`: in lockstep, the mean over the folds
   of the monitored metric at each fold's best epoch so far is reported to the trial after every epoch, so the
   study's pruner compares like with like, and a pruned trial stops every fold. Above
   :data:`~trainforge.cv.lockstep.LOCKSTEP_MAX_BYTES` (K models, their Adam state and their splits at once)
   the folds run one after another and the cumulative mean is reported after each fold (step = fold index);
3. the trial's value: the CV mean of the monitored metric (each fold at its best epoch), as ``train --cv``
   logs it. The trial run carries ``cv_<metric>_mean``/``_std`` of every validation metric,
   ``fold<i>_<metric>`` for every fold, the config (``config.yaml``) and the params; the trial keeps the
   folds' best epochs in the user attr ``fold_best_epochs``.

The study's best configuration is then refit (:func:`refit_best`) exactly as ``train --cv`` refits: on all
non-test rows, for the median of its folds' best epochs, early stopping off.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainforge.tracking import tags as tag

#: the trial user attr holding the best epoch of each fold (what the refit's epoch count is the median of)
FOLD_EPOCHS_ATTR = "fold_best_epochs"


@dataclass
class CVTrialResult:
    """What one cross-validated trial produced, in the shape :class:`~trainforge.tuning.objective.Objective`
    reads: ``best_metrics`` are the CV means (``val_accuracy`` = mean over folds at each fold's best epoch),
    ``best_epoch`` the median of the folds' best epochs, ``epochs_run`` the most epochs a fold ran."""

    run_id: str
    best_epoch: int
    epochs_run: int
    best_metrics: dict[str, float]
    mode: str
    folds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def fold_task(cfg: dict[str, Any]) -> str | None:
    from trainforge.training.modeling import choose_task

    return choose_task(cfg["model"]["name"], cfg["dataset"]["name"])


def load_trial_folds(cfg: dict[str, Any], k: int, cache: dict[Any, Any] | None = None) -> Any:
    """The :class:`~trainforge.training.folds.FoldData` of a trial's resolved ``cfg`` (``cache``: keyed by the
    dataset, the split settings and the task, so a worker loads them once). Raises ConfigError as ``load_folds``."""
    from trainforge.training.folds import load_folds

    task = fold_task(cfg)
    split = {key: cfg["trainer"].get(key) for key in ("seed", "test_fraction")}
    key = (json.dumps(cfg["dataset"], sort_keys=True, default=str), json.dumps(split, sort_keys=True), task, k)
    if cache is not None and key in cache:
        return cache[key]
    data = load_folds(cfg["dataset"], cfg["trainer"], k, task=task)
    if cache is not None:
        cache[key] = data
    return data


def count_params(cfg: dict[str, Any], meta: Any) -> int | None:
    """Parameters of ``cfg``'s torch model for ``meta``; ``None`` for a model the epoch loop does not train (a
    scikit-learn estimator: fitted once, nothing to report per epoch, so its folds run one after another and
    the cumulative mean is reported after each), 0 for a model that cannot be built here (its fit says why)."""
    from trainforge import manager
    from trainforge.errors import TrainforgeError
    from trainforge.training.modeling import build_model

    if getattr(manager.get("model", cfg["model"]["name"]), "fit", "epochs") != "epochs":
        return None
    try:
        return sum(int(p.numel()) for p in build_model(cfg["model"], meta).parameters())
    except (TrainforgeError, RuntimeError, ValueError, TypeError):
        return 0


def make_cv_fitter(settings: dict[str, Any], *, parent_run_id: str, experiment: str | None) -> Callable[..., Any]:
    """The fitter of a ``tune --cv K`` study (``settings``: :meth:`TuneSettings.to_json`, ``cv`` = K); see the
    module doc. Its call ``fit(cfg, *, trial, tags, callbacks, pruning, on_start) -> CVTrialResult`` (``pruning``:
    the objective's :class:`~trainforge.tuning.objective.OptunaPruning`, whose trial and ``report`` switch the
    fold means go to and whose ``epoch`` it keeps; ``callbacks``: the others, given to every fold) raises
    ``optuna.TrialPruned`` when the pruner stops the trial and re-raises a fold's error (the trial run FAILED)."""
    k, study, uri = int(settings["cv"]), settings["study"], settings.get("tracking_uri")
    cache: dict[Any, Any] = {}

    def fit(cfg: dict[str, Any], *, trial: Any, tags: dict[str, str], callbacks: list[Any], pruning: Any,
            on_start: Callable[[str], None]) -> CVTrialResult:
        from trainforge.cv.lockstep import mode_for
        from trainforge.tracking import store as tracking

        fold_data = load_trial_folds(cfg, k, cache)
        n_params = count_params(cfg, fold_data.refit.meta)
        mode = "sequential" if n_params is None else mode_for(n_params, fold_data.bundles)
        run_id = _open_trial_run(cfg, fold_data, f"{study}-trial-{trial.number}", parent_run_id, experiment, uri,
                                 {**tags, tag.CV_FOLDS: str(k), tag.CV_KIND: fold_data.folds.kind, tag.CV_MODE: mode})
        on_start(run_id)
        trial.set_user_attr("cv_mode", mode)
        with tracking.run_status(run_id):
            return _fit_trial(cfg, fold_data, trial, run_id, (pruning, list(callbacks)), mode,
                              dict(study=study, experiment=experiment, uri=uri))

    return fit


def _open_trial_run(cfg: dict[str, Any], fold_data: Any, name: str, parent_run_id: str, experiment: str | None,
                    tracking_uri: str | None, tags: dict[str, str]) -> str:
    """Create the trial's child run of the study's parent, with the config's params and ``config.yaml``."""
    import tempfile
    from pathlib import Path

    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    from trainforge.tracking import runlog
    from trainforge.tracking import store as tracking
    from trainforge.tracking.stale import process_tags

    experiment_id = tracking.setup(tracking_uri, experiment)
    run_tags = {**process_tags(), **tags, "mlflow.parentRunId": parent_run_id}
    run_id = MlflowClient().create_run(experiment_id, run_name=name, tags=resolve_tags(run_tags)).info.run_id
    runlog.log_params(run_id, cfg, fold_data.refit.meta)
    with tempfile.TemporaryDirectory(prefix="trainforge-cv-trial-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        mlflow.log_artifact(str(path), run_id=run_id)
    return run_id


def _fit_trial(cfg: dict[str, Any], fold_data: Any, trial: Any, run_id: str, callbacks: tuple[Any, list[Any]],
               mode: str, where: dict[str, Any]) -> CVTrialResult:
    """Steps 2-3 of the module doc inside the open trial run."""
    import mlflow
    import optuna

    from trainforge.cv.lockstep import LOCKSTEP_MAX_BYTES, fit_folds
    from trainforge.cv.runner import best_val_metrics, median_epoch
    from trainforge.cv.stats import summarize
    from trainforge.run import api
    from trainforge.tuning.parent_run import finish_child

    pruning, others = callbacks
    metric = cfg["trainer"]["monitor"]
    fold_runs: list[str] = []

    def train_fold(i: int, bundle: Any, cbs: list[Any]) -> Any:
        return api.train(cfg, tracking_uri=where["uri"], experiment=where["experiment"],
                         run_name=f"{where['study']}-trial-{trial.number}-fold{i}", parent_run_id=run_id,
                         tags={tag.COMMAND: "tune", tag.ROLE: "fold", tag.FOLD: str(i), tag.STUDY: where["study"]},
                         export=False, quiet=True, callbacks=[*others, *cbs], data=bundle, on_start=fold_runs.append,
                         extras={"optuna_trial": trial})

    def report(step: int, mean: float) -> bool:
        if pruning is not None:
            pruning.epoch = step  # the trial's epochs_run (fold index + 1 in sequential mode: still a count)
        if pruning is None or not pruning.report or not math.isfinite(mean):
            return False
        trial.report(mean, step)
        return trial.should_prune()

    try:
        results, mode = fit_folds(train_fold, fold_data.bundles, metric, report,
                                  max_bytes=LOCKSTEP_MAX_BYTES if mode == "lockstep" else -1)
    except optuna.TrialPruned:
        for fold_run in fold_runs:  # each fold stopped with the trial: a decision, not an error
            finish_child(fold_run, "PRUNED", trial, epoch=pruning.epoch if pruning else 0)
        raise
    folds = [{"fold": i, "run_id": r.run_id, "best_epoch": r.best_epoch, "metrics": best_val_metrics(r)}
             for i, r in enumerate(results)]
    summary = summarize([f["metrics"] for f in folds])
    per_fold = {f"fold{f['fold']}_{key}": value for f in folds for key, value in f["metrics"].items()}
    mlflow.log_metrics({**summary, **per_fold}, run_id=run_id)
    best_epochs = [int(f["best_epoch"]) for f in folds]
    trial.set_user_attr(FOLD_EPOCHS_ATTR, best_epochs)
    trial.set_user_attr("fold_scores", [float(f["metrics"].get(metric, math.nan)) for f in folds])
    means = {key[3:-5]: value for key, value in summary.items() if key.startswith("cv_") and key.endswith("_mean")}
    return CVTrialResult(run_id, median_epoch(best_epochs), max(r.epochs_run for r in results), means, mode, folds,
                         sum(r.seconds for r in results))


def refit_best(best: Any, parent_run_id: str, k: int, *, study_name: str, tracking_uri: str | None,
               experiment: str | None) -> tuple[str, Any]:
    """Refit the best trial's config on all non-test rows for the median of its folds' best epochs, as
    ``train --cv`` does (:func:`trainforge.cv.runner.refit_config`); returns ``(refit run id, refit bundle)``:
    the bundle whose test split the exported model is scored on. Raises TrainforgeError when the trial has
    no run or no recorded fold epochs."""
    import yaml

    from trainforge.cv.runner import refit_config
    from trainforge.errors import TrainforgeError
    from trainforge.run import api
    from trainforge.tracking import store as tracking

    epochs = best.user_attrs.get(FOLD_EPOCHS_ATTR)
    if not epochs or not best.user_attrs.get("mlflow_run_id"):
        raise TrainforgeError(f"trial {best.number} was not cross-validated (no {FOLD_EPOCHS_ATTR}): "
                              "a study's --cv cannot change once it has trials")
    with open(tracking.download(best.user_attrs["mlflow_run_id"], "config.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    fold_data = load_trial_folds(cfg, k)
    result = api.train(refit_config(cfg, epochs), tracking_uri=tracking_uri, experiment=experiment,
                       run_name=f"{study_name}-refit", parent_run_id=parent_run_id, export=False, quiet=True,
                       data=fold_data.refit, tags={tag.COMMAND: "tune", tag.ROLE: "refit", tag.STUDY: study_name,
                                                   tag.REFIT_OF_TRIAL: str(best.number)})
    return result.run_id, fold_data.refit
