"""``tune(settings)``: hyperparameter search with Optuna; the CLI's ``trainforge tune`` calls exactly this.

Order: the settings (:class:`~trainforge.tuning.settings.TuneSettings`: arguments > ``tune:`` section > the
stored study > defaults) -> load the data once and check every model fits it -> settle the metric and the
objectives -> the search space (:mod:`~trainforge.tuning.space`) -> create or resume the study
(:mod:`~trainforge.tuning.study`) and its MLflow parent run (:mod:`~trainforge.tuning.parent_run`) -> run the
trials here or in ``n_jobs`` worker processes (:mod:`~trainforge.tuning.runner`; one trial:
:mod:`~trainforge.tuning.objective`) -> choose (:mod:`~trainforge.tuning.selection`), export and register the
best model (:mod:`~trainforge.tuning.best_model`), with ``explain`` explain it into the parent run
(:mod:`~trainforge.explaining`), log the summary to the parent run.

Counting: each process runs exactly its own ``n_trials`` (Optuna's ``optimize(n_trials=...)`` counts the
trials it ran, whatever their state), split evenly over its ``n_jobs`` workers. Two processes asked for
6 trials each on one study end with 12 finished trials. With ``study_trials=N`` the target is the study's:
every process runs trials until the study holds exactly N finished (COMPLETE or PRUNED) trials, whoever ran
them, picking up the retries of trials whose worker died; ``n_trials``, if also given, caps this command.

Ctrl-C: the running trial becomes FAIL and its MLflow run KILLED; finished trials stay in the storage;
``tune`` logs what it has to the parent run (KILLED) and returns with ``interrupted=True``. A study that
ends without one COMPLETE trial raises :class:`~trainforge.errors.NoTrialCompleted` (parent run FAILED).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainforge.errors import NoTrialCompleted, TrainforgeError
from trainforge.tracking import tags as tag
from trainforge.tuning.settings import TuneSettings

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """The outcome of a ``tune`` call; counts are over the whole study (every process, every resume)."""

    study: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    parent_run_id: str
    onnx_path: str | None
    model_version: str | None
    n_complete: int
    n_pruned: int
    n_fail: int
    n_running: int = 0
    n_trials_run: int = 0
    best_trial: int | None = None
    best_run_id: str | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    metric: str = ""
    direction: str = ""
    seconds: float = 0.0
    interrupted: bool = False
    #: multi-objective / deployment studies (:mod:`trainforge.tuning.deployment`): the objective names, the
    #: Pareto front ``[{"trial", "values": {name: value}, "run_id"}]`` and the trial exported (``selected``)
    objectives: list[str] = field(default_factory=list)
    pareto: list[dict[str, Any]] | None = None
    selected: int | None = None
    #: every FAIL trial of the study: ``[{"trial": N, "reason": "ValueError: ..."}]``
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: ``explain``: the exported best model's explanation (:meth:`trainforge.explaining.api.ExplainReport.to_dict`)
    explanation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tune(settings: TuneSettings | dict[str, Any] | str | Path | None = None, *, export_worker: bool = False,
         **given: Any) -> TuneResult:
    """Run (or resume) a study; see the module docstring. ``settings``: a :class:`TuneSettings`, or a config
    (dict, YAML path, None) resolved with the keyword options ``given`` (:meth:`TuneSettings.resolve`).
    ``export_worker``: fork the export worker (:mod:`trainforge.exporting.worker`) now and the plots' process
    at the end (:class:`~trainforge.plots.StudyPlots`); only a process with no torch run and no thread yet may.

    Raises TrainforgeError subclasses for bad settings, storages, study names or search spaces before any
    trial runs; TrainforgeError when a ``study_trials`` study holds more than ``study_trials + 3`` failed
    trials, or when no Pareto-front trial meets ``select`` (after the summary is logged);
    :class:`~trainforge.errors.NoTrialCompleted` when the study has no COMPLETE trial.
    """
    import optuna

    from trainforge.exporting import jobs
    from trainforge.plots import StudyPlots
    from trainforge.tuning import parent_run, runner, selection
    from trainforge.tuning.deployment import Deployment
    from trainforge.tuning.study import trial_counts

    started = time.perf_counter()
    if not isinstance(settings, TuneSettings):
        settings = TuneSettings.resolve(settings, **given)
    exporter = jobs.choose(export_worker and settings.export)  # before torch runs and MLflow starts threads
    if settings.quiet:  # failed and interrupted trials are still recorded (Optuna, MLflow), just not logged
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    bundle, settings = _data(settings)
    space, max_epochs = _space(settings)
    study, created = _open_study(settings, space, max_epochs)
    parent = parent_run.ensure_parent_run(study, created, parent_run.setup_tracking(settings.tracking_uri,
                                          settings.experiment), {tag.DATASET: settings.dataset})
    experiment = parent_run.experiment_name(parent)
    parent_run.log_study_start(parent, created, settings, space.describe())
    plan = runner.Plan(settings.to_json(), parent, experiment, max_epochs, logging.getLogger().getEffectiveLevel())
    ran, interrupted = runner.run(plan, bundle=bundle, study=study)

    dep = Deployment.from_settings(settings.deployment)
    names = dep.names if dep else []
    try:
        best, problem = selection.pick(study, names, settings.select), None
    except TrainforgeError as exc:  # no front trial meets --select: log the study, then say so
        best, problem = None, exc
    ship = best is not None and not interrupted
    pending = _ship(settings, best, parent, bundle, experiment, exporter) if ship else None
    plots = None if interrupted else StudyPlots.start(study, fork=export_worker)  # drawn meanwhile when forked
    with contextlib.closing(pending or exporter), contextlib.closing(plots or exporter):
        exported = pending.finish() if pending else None  # a forked exporter has been exporting since _ship
        parent_run.log_study_summary(study, parent, space.fixed, trial_counts(study), plots=plots)
    explanation = _explain(settings, parent, exported) if exported is not None and settings.explain else None
    if len(study.directions) > 1:
        parent_run.log_front(study, parent, names, best, space.fixed)
    result = _result(settings, study, space, (parent, names), best, exported, ran, interrupted, started)
    result.explanation = explanation
    failed = not interrupted and result.n_complete == 0
    parent_run.end_run(parent, "KILLED" if interrupted else "FAILED" if failed else "FINISHED")
    if failed:
        raise NoTrialCompleted(_no_trial_line(result), result)
    if problem is not None:
        raise problem
    return result


def _data(settings: TuneSettings) -> tuple[Any, TuneSettings]:
    """Load the data once (with the targets of the task the first model/dataset pair runs), check every
    model fits it, and settle the metric and objectives for its task (:meth:`TuneSettings.for_task`)."""
    from trainforge.run.api import load_data
    from trainforge.training.modeling import check_compatible
    from trainforge.training.tasks import get_task, metric_mode
    from trainforge.tuning.space import space_of

    bundle = load_data(space_of(settings.to_json()).first_config(settings.base))
    for name in settings.models:
        check_compatible({"name": name}, bundle.meta)
    task = get_task(bundle.meta.task, meta=bundle.meta)
    computed = [f"val_{k}" for k in task.compute(task.new_state(bundle.meta.output_dim, _cpu()))]
    return bundle, settings.for_task(task.name, computed, lambda m: metric_mode(m, task) == "max")


def _space(settings: TuneSettings) -> tuple[Any, int]:
    """The study's search space, every branch resolved once (an error before the first trial), and the
    trials' maximum epoch count (what the pruners are sized to)."""
    from trainforge.tuning.space import space_of

    space = space_of(settings.to_json())
    configs = [space.config(settings.base, m, o) for m in space.models for o in space.optimizers]
    return space, int(configs[0]["trainer"]["epochs"])


def _open_study(settings: TuneSettings, space: Any, max_epochs: int) -> tuple[Any, bool]:
    """Create (storing the settings, enqueueing trial 0 at the defaults) or resume the study; names a new
    study ``MODELS-DATASET-TIMESTAMP`` and records the name in ``settings.study``."""
    from trainforge.tuning import deployment, study

    settings.study = settings.study or study.check_study_name(
        f"{'_'.join(space.models)}-{settings.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    dep = deployment.Deployment.from_settings(settings.deployment)
    the_study, created = study.open_study(
        settings.storage_object(), settings.study, deployment.study_directions(dep, settings.direction),
        study.make_sampler(settings.sampler, settings.seed), study.make_pruner(settings.pruner, max_epochs))
    if created:
        the_study.set_user_attr(study.SETTINGS_ATTR, settings.stored())
        deployment.name_metrics(the_study, dep)
        # Trial 0 is what `trainforge train` would run: the search never starts below the default.
        the_study.enqueue_trial(space.default_params(settings.base), user_attrs={tag.DEFAULTS: True})
    else:
        space.check_compatible(the_study.get_trials(deepcopy=False))
    return the_study, created


def _ship(settings: TuneSettings, best: Any, parent: str, bundle: Any, experiment: str, exporter: Any) -> Any:
    """Refit (``--refit``; always with ``--cv``) the chosen trial and start its export into the parent run
    (:class:`~trainforge.tuning.best_model.PendingExport`: finished, it is registered); None with ``export=False``."""
    if not settings.export:
        return None
    from trainforge.tuning import best_model, deployment

    source = best.user_attrs.get("mlflow_run_id")
    if not source:
        raise TrainforgeError(f"the best trial {best.number} of study {settings.study!r} has no MLflow run")
    if settings.cv:  # refit on all non-test rows for the folds' median best epoch, as train --cv does
        from trainforge.tuning.cv_trial import refit_best

        source, bundle = refit_best(best, parent, settings.cv, study_name=settings.study,
                                    tracking_uri=settings.tracking_uri, experiment=experiment)
    elif settings.refit:
        source = best_model.refit(best, parent, bundle, study_name=settings.study,
                                  tracking_uri=settings.tracking_uri, experiment=experiment)
    tags = {tag.STUDY: settings.study, tag.TRIAL: str(best.number),
            **deployment.version_tags(best, deployment.Deployment.from_settings(settings.deployment))}
    return best_model.start_export(source, parent, register=settings.register or settings.study, bundle=bundle,
                                   tags=tags, quantize=best.user_attrs.get("quantize", "none"),
                                   threads=settings.threads, exporter=exporter)


def _explain(settings: TuneSettings, parent: str, exported: Any) -> dict[str, Any]:
    """``explain``: the exported best model (its file in the parent run, its checkpoint in the trial's or the
    refit's run) explained and logged to the parent run (:func:`trainforge.explaining.api.explain_run`)."""
    from trainforge.explaining.api import RUN_ROWS, explain_run

    report = explain_run(parent, exported.onnx_path, model_run=exported.source_run_id,
                         rows=settings.explain_rows or RUN_ROWS, tracking_uri=settings.tracking_uri,
                         progress=not settings.quiet)
    return report.to_dict()


def _result(settings: TuneSettings, study: Any, space: Any, run: tuple[str, list[str]], best: Any, exported: Any,
            ran: int, interrupted: bool, started: float) -> TuneResult:
    """``run``: the parent run id and the objective names (empty for a plain study)."""
    from optuna.trial import TrialState

    from trainforge.tuning import selection
    from trainforge.tuning.study import trial_counts

    counts, (parent, names) = trial_counts(study), run
    multi = len(study.directions) > 1
    failures = [{"trial": t.number, "reason": t.user_attrs.get("fail_reason") or "no reason recorded"}
                for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    return TuneResult(
        study=settings.study, storage=settings.storage, best_value=None if best is None else float(best.values[0]),
        best_params={} if best is None else {**space.fixed, **best.params}, parent_run_id=parent,
        onnx_path=exported.onnx_path if exported else None, model_version=exported.model_version if exported else None,
        n_complete=counts["n_complete"], n_pruned=counts["n_pruned"], n_fail=counts["n_fail"],
        n_running=counts["n_running"], n_trials_run=ran, best_trial=None if best is None else best.number,
        best_run_id=None if best is None else best.user_attrs.get("mlflow_run_id"),
        test_metrics=exported.test_metrics if exported else {}, metric=settings.metric or "",
        direction=settings.direction or "", seconds=time.perf_counter() - started, interrupted=interrupted,
        objectives=names, pareto=selection.entries(selection.front(study), names) if multi else None,
        selected=None if best is None else best.number, failures=failures)


def _no_trial_line(result: TuneResult) -> str:
    """``no trial of study 's' completed: 3 failed, 3 of them with "ValueError: ..." (1 pruned)``."""
    reasons = collections.Counter(f["reason"].splitlines()[0][:300] for f in result.failures)
    pruned = f" ({result.n_pruned} pruned)" if result.n_pruned else ""
    if not reasons:
        return f"no trial of study {result.study!r} completed{pruned or ' (none finished)'}"
    reason, count = reasons.most_common(1)[0]
    return (f"no trial of study {result.study!r} completed: {result.n_fail} failed, {count} of them with "
            f"{reason!r}{pruned}; see tune --json for each trial's reason")


def _cpu() -> Any:
    import torch

    return torch.device("cpu")
