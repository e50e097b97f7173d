"""``tune(...)``: hyperparameter search with Optuna; the CLI's ``trainforge tune`` calls exactly this.

Order: resolve the settings (arguments > ``tune:`` config section > the stored study's settings >
defaults) -> open the storage -> load the data once and check every model fits it -> build the search
space (:mod:`trainforge.tuning.search`) -> create or resume the study -> attach to (or create) its MLflow parent
run (:mod:`trainforge.tuning.study`) -> run the trials in this process or in ``n_jobs`` spawned worker
processes (:mod:`trainforge.tuning.workers`; one trial: :mod:`trainforge.tuning.objective`) -> log the summary to the
parent run, export the best model through the ONNX gate, register it (:mod:`trainforge.tuning.tune_report`).

Counting: each process runs exactly its own ``n_trials`` (Optuna's ``optimize(n_trials=...)`` counts the
trials it ran, whatever their state), split evenly over its ``n_jobs`` workers. Two processes asked for
6 trials each on one study end with 12 finished trials. With ``study_trials=N`` (``--study-trials``) the
target is the study's instead: every process (and each of its workers) runs trials until the study holds
exactly N finished (COMPLETE or PRUNED) trials, whoever ran them, picking up the retries of trials whose
worker died (:mod:`trainforge.tuning.study_target`); ``n_trials``, if also given, caps the trials this command
runs (split over its workers like without a target).

Ctrl-C: the running trial becomes FAIL and its MLflow run KILLED (Optuna marks a trial FAIL when
``KeyboardInterrupt`` escapes the objective, then re-raises it); finished trials stay in the storage;
``tune`` then logs what it has to the parent run (KILLED) and returns with ``interrupted=True``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainforge.errors import ConfigError, TrainforgeError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

DEFAULT_N_TRIALS = 20
#: ``trainer.val_fraction`` for tuning unless set: the best of many trials is picked on the validation split,
#: and on a small one the pick follows noise (digits: 180 rows at train's 0.1, one row = 0.56 points; the
#: best of 30 trials scored 0.994 there but 0.972 on the test split). 0.2 doubles it; the test split,
#: drawn first, is the same as ``train``'s. ``--refit`` gives the held-out rows back to the final model.
TUNE_VAL_FRACTION = 0.2
TUNE_KEYS = frozenset({"n_trials", "study_trials", "timeout", "study", "storage", "sampler", "pruner", "metric",
                       "direction", "n_jobs", "seed", "refit", "register", "models", "optimizers", "objectives",
                       "latency_batch", "latency_threads", "provider", "search_quantization", "select"})


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
    #: multi-objective / deployment studies (:mod:`trainforge.tuning.objectives`): the objective names, the
    #: Pareto front ``[{"trial", "values": {name: value}, "run_id"}]`` and the trial exported (``selected``)
    objectives: list[str] = field(default_factory=list)
    pareto: list[dict[str, Any]] | None = None
    selected: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _names(value: Any) -> list[str] | None:
    if value is None or value == "" or value == []:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def _study_settings(storage: Any, name: str | None) -> dict[str, Any]:
    import optuna

    from trainforge.tuning.study import SETTINGS_ATTR, check_study_name

    if name is None or check_study_name(name) not in optuna.get_all_study_names(storage):
        return {}
    return dict(optuna.load_study(study_name=name, storage=storage).user_attrs.get(SETTINGS_ATTR) or {})


def tune(
    config: dict[str, Any] | str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    models: str | list[str] | None = None,
    optimizers: str | list[str] | None = None,
    dataset: str | None = None,
    epochs: int | None = None,
    n_trials: int | None = None,
    study_trials: int | None = None,
    timeout: float | None = None,
    study: str | None = None,
    storage: str | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    metric: str | None = None,
    direction: str | None = None,
    n_jobs: int | None = None,
    seed: int | None = None,
    refit: bool | None = None,
    register: str | None = None,
    export: bool = True,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    quiet: bool = True,
    objectives: list[str] | None = None,
    latency_batch: int | None = None,
    latency_threads: int | None = None,
    provider: str | None = None,
    search_quantization: bool | None = None,
    select: str | None = None,
) -> TuneResult:
    """Run (or resume) a study; see the module docstring. ``models``/``optimizers``: names or ``"a,b"``.

    ``seed`` seeds the sampler (worker ``i`` of ``n_jobs`` uses ``seed + i``); the data split and weight
    initialisation follow ``trainer.seed`` as in ``train``.

    ``n_trials``: trials this call runs (default 20; unlimited with only ``timeout``). ``study_trials``:
    run until the study holds exactly this many finished (COMPLETE or PRUNED) trials, counting every
    process sharing the study; then ``n_trials`` is an optional cap for this call. ``timeout`` (seconds):
    start no trial after it. Raises TrainforgeError subclasses for bad settings, storages, study names or
    search spaces, before any trial runs, and TrainforgeError when a ``study_trials`` study accumulates more
    than ``study_trials + 3`` failed trials.

    ``objectives`` (``["val_accuracy", "latency_ms"]``; ``NAME:max``/``NAME:min``), ``latency_batch``,
    ``latency_threads``, ``provider`` (``cpu``/``cuda``) and ``search_quantization``: measured deployment
    objectives, see :mod:`trainforge.tuning.objectives`; two or more make a multi-objective study (no
    pruning). ``select`` picks the exported model from its Pareto front (:mod:`trainforge.tuning.pareto`);
    when no front trial meets it, the summary is still logged and TrainforgeError lists the front.
    """
    import optuna

    from trainforge import config as config_mod
    from trainforge.run.api import load_data
    from trainforge.training.modeling import check_compatible
    from trainforge.training.tasks import get_task, metric_mode
    from trainforge.tuning import objectives as objectives_mod
    from trainforge.tuning import pareto, tune_report
    from trainforge.tuning import study as study_mod
    from trainforge.tuning.search import Recorder, SearchSpace, merge_sample
    from trainforge.tuning.workers import Plan, run_trials, run_workers

    started = time.perf_counter()
    if quiet:  # failed and interrupted trials are still recorded (Optuna, MLflow), just not logged
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    raw = config_mod.load_file(config) if isinstance(config, (str, Path)) else copy.deepcopy(config or {})
    section = dict(raw.pop("tune", None) or {})
    if set(section) - TUNE_KEYS:
        raise ConfigError(f"unknown key(s) in tune: {', '.join(sorted(set(section) - TUNE_KEYS))}; "
                          f"valid: {', '.join(sorted(TUNE_KEYS))}")
    space_overrides = raw.pop("search_space", None)
    given = {"models": _names(models), "optimizers": _names(optimizers), "n_trials": n_trials,
             "study_trials": study_trials, "timeout": timeout,
             "study": study, "storage": storage, "sampler": sampler, "pruner": pruner, "metric": metric,
             "direction": direction, "n_jobs": n_jobs, "seed": seed, "refit": refit, "register": register,
             "objectives": list(objectives or []) or None, "latency_batch": latency_batch,
             "latency_threads": latency_threads, "provider": provider, "search_quantization": search_quantization,
             "select": select}
    opts = {**section, **{k: v for k, v in given.items() if v is not None}}
    opts["models"], opts["optimizers"] = _names(opts.get("models")), _names(opts.get("optimizers"))
    target = opts.get("study_trials")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 1):
        raise ConfigError(f"study_trials must be a whole number >= 1, got {target!r}")

    # 1. Storage and, when resuming, the study's stored settings.
    storage_obj = study_mod.open_storage(opts.get("storage"))
    stored = _study_settings(storage_obj, opts.get("study"))
    flags: dict[str, Any] = {"dataset": {"name": dataset}} if dataset else {}
    if epochs:
        flags["trainer"] = {"epochs": int(epochs)}
    base = config_mod.merge(stored.get("base"), raw, config_mod.parse_overrides(list(overrides)), flags)
    # Trials are chosen on the validation split: hold out more than train's 10% unless told otherwise.
    base.setdefault("trainer", {}).setdefault("val_fraction", TUNE_VAL_FRACTION)
    settings = {
        "models": opts["models"] or stored.get("models") or [(raw.get("model") or {}).get("name")
                                                            or config_mod.DEFAULT_SELECTION["model"]],
        "optimizers": opts["optimizers"] or stored.get("optimizers") or [
            (raw.get("optimizer") or {}).get("name") or config_mod.DEFAULT_SELECTION["optimizer"]],
        "overrides": space_overrides if space_overrides is not None else stored.get("overrides") or {},
        "sampler": opts.get("sampler") or stored.get("sampler") or "tpe",
        "pruner": opts.get("pruner") or stored.get("pruner") or "median",
    }
    settings["dataset"] = (base.get("dataset") or {}).get("name") or config_mod.DEFAULT_SELECTION["dataset"]
    _check_frozen(stored, settings, opts.get("study"), ("models", "optimizers", "dataset"))
    study_mod.make_sampler(settings["sampler"], None), study_mod.make_pruner(settings["pruner"], 1)  # validate

    # 2. The data (once), model/data compatibility, the metric and its direction.
    quantization = bool(opts.get("search_quantization") or (stored.get("deployment") or {}).get("search_quantization"))
    space = SearchSpace(list(settings["models"]), list(settings["optimizers"]), settings["overrides"],
                        quantization=quantization)
    first = merge_sample(base, space.sample(Recorder(), model=space.models[0], optimizer=space.optimizers[0]))
    cfg0 = config_mod.resolve(first)
    bundle = load_data(cfg0)  # with the targets of the task the model/dataset pair runs
    for name in space.models:
        check_compatible({"name": name}, bundle.meta)
    task = get_task(bundle.meta.task, meta=bundle.meta)
    computed = [f"val_{k}" for k in task.compute(task.new_state(bundle.meta.output_dim, _cpu()))]
    default_metric = "val_accuracy" if task.name == "classification" else "val_loss"
    deploy = objectives_mod.resolve(opts, stored, computed, lambda m: metric_mode(m, task) == "max")
    metric = (objectives_mod.monitor_metric(deploy, computed, default_metric) if deploy else None) or \
        opts.get("metric") or stored.get("metric") or default_metric
    if metric not in computed:
        raise ConfigError(f"unknown metric {metric!r} for {task.name}; choose one of {', '.join(computed)}")
    direction = opts.get("direction") or stored.get("direction") or \
        ("maximize" if metric_mode(metric, task) == "max" else "minimize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"direction must be maximize or minimize, got {direction!r}")
    settings.update(metric=metric, direction=direction, deployment=deploy.to_settings() if deploy else None)
    _check_frozen(stored, settings, opts.get("study"), ("metric", "direction", "deployment"))
    selection = objectives_mod.check_modes(deploy, settings, opts)
    base.setdefault("trainer", {}).update(monitor=metric, mode="max" if direction == "maximize" else "min")
    settings["base"] = base
    for model in space.models:  # every branch must resolve before the first trial runs
        for optimizer in space.optimizers:
            config_mod.resolve(merge_sample(base, space.sample(Recorder(), model=model, optimizer=optimizer)))
    max_epochs = int(cfg0["trainer"]["epochs"])

    # 3. The study and its parent run.
    name = opts.get("study") or study_mod.check_study_name(
        f"{'_'.join(space.models)}-{settings['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}")
    sampler_seed = opts.get("seed")
    the_study, created = study_mod.open_study(
        storage_obj, name, objectives_mod.study_directions(deploy, direction),
        study_mod.make_sampler(settings["sampler"], sampler_seed), study_mod.make_pruner(settings["pruner"], max_epochs))
    if created:
        the_study.set_user_attr(study_mod.SETTINGS_ATTR, _jsonable(settings))
        objectives_mod.name_metrics(the_study, deploy)
        # Trial 0 is what `trainforge train` would run: the search never starts below the default.
        the_study.enqueue_trial(space.default_params(base), user_attrs={tag.DEFAULTS: True})
    else:
        space.check_compatible(the_study.get_trials(deepcopy=False))
    settings.update(study=name, storage=opts.get("storage") or study_mod.DEFAULT_STORAGE)
    experiment_id = _setup_tracking(tracking_uri, experiment)
    parent = study_mod.ensure_parent_run(the_study, created, experiment_id, {tag.DATASET: settings["dataset"]})
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_name = client.get_experiment(client.get_run(parent).info.experiment_id).name
    tune_report.log_study_start(parent, created, settings, space.describe())

    # 4. Trials, here or in worker processes.
    plan = Plan(name, opts.get("storage"), _jsonable(settings), parent, experiment_name, tracking_uri,
                sampler_seed, quiet, max_epochs, logging.getLogger().getEffectiveLevel(), study_trials=target)
    total = opts.get("n_trials")
    if total is None and (target is not None or opts.get("timeout")):
        total = None  # no per-command count: the study target or the timeout decides
    else:
        total = int(total or DEFAULT_N_TRIALS)
    jobs = max(1, int(opts.get("n_jobs") or 1))
    interrupted, ran = False, [0]
    try:
        if jobs == 1:
            run_trials(plan, total, opts.get("timeout"), 0, bundle=bundle, study=the_study, counter=ran)
        else:
            run_workers(plan, total, opts.get("timeout"), jobs, counter=ran)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: finished trials are kept in study %s", name)

    # 5. Summary, best model, parent status.
    counts = study_mod.trial_counts(the_study)
    best, problem = tune_report.best_trial(the_study), None
    if deploy is not None and deploy.multi:
        try:
            best = pareto.choose(the_study, deploy.names, selection)
        except TrainforgeError as exc:  # no front trial meets --select: log the study, then say so
            best, problem = None, exc
    exported = None
    if best is not None and export and not interrupted:
        source = best.user_attrs.get("mlflow_run_id")
        if not source:
            raise TrainforgeError(f"the best trial {best.number} of study {name!r} has no MLflow run")
        if opts.get("refit"):
            source = tune_report.refit(best, parent, bundle, study_name=name, tracking_uri=tracking_uri,
                                       experiment=experiment_name)
        exported = tune_report.export_best(source, parent, register=opts.get("register") or name, bundle=bundle,
                                           tags={tag.STUDY: name, tag.TRIAL: str(best.number),
                                                 **objectives_mod.version_tags(best, deploy)},
                                           quantize=best.user_attrs.get("quantize", "none"))
    tune_report.log_study_summary(the_study, parent, space.fixed, plots=not interrupted)
    if deploy is not None and deploy.multi:
        pareto.log_front(the_study, parent, deploy.names, best, space.fixed)
    client.set_terminated(parent, status="KILLED" if interrupted else "FINISHED")
    if problem is not None:
        raise problem
    return TuneResult(
        study=name, storage=settings["storage"], best_value=None if best is None else float(best.values[0]),
        best_params={} if best is None else {**space.fixed, **best.params}, parent_run_id=parent,
        onnx_path=exported.onnx_path if exported else None, model_version=exported.model_version if exported else None,
        n_complete=counts["n_complete"], n_pruned=counts["n_pruned"], n_fail=counts["n_fail"],
        n_running=counts["n_running"], n_trials_run=ran[0], best_trial=None if best is None else best.number,
        best_run_id=None if best is None else best.user_attrs.get("mlflow_run_id"),
        test_metrics=exported.test_metrics if exported else {}, metric=metric, direction=direction,
        seconds=time.perf_counter() - started, interrupted=interrupted, objectives=deploy.names if deploy else [],
        pareto=pareto.entries(pareto.front(the_study), deploy.names) if deploy and deploy.multi else None,
        selected=None if best is None else best.number)


def _setup_tracking(uri: str | None, experiment: str | None, attempts: int = 5) -> str:
    """``tracking.setup`` retried: processes started at the same moment on a fresh SQLite store race to
    create MLflow's tables and the experiment; the losers' errors ("table ... already exists",
    a unique-constraint failure) clear once the winner is done."""
    from trainforge.tracking import store as tracking

    for attempt in range(attempts):
        try:
            return tracking.setup(uri, experiment)
        except TrainforgeError:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 + attempt)
    raise AssertionError("unreachable")


def _check_frozen(stored: dict[str, Any], settings: dict[str, Any], study: str | None, keys: Iterable[str]) -> None:
    for key in keys:
        if stored.get(key) is not None and stored[key] != settings[key]:
            raise ConfigError(f"study {study!r} was created with {key}={stored[key]!r}; "
                              f"{settings[key]!r} conflicts (drop the option or start a new --study)")


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def export_study_best(study: str, output: str | Path | None = None, *, storage: str | None = None,
                      tracking_uri: str | None = None, opset: int | None = None, log_to_run: bool = False) -> Any:
    """Re-export the study's choice (best trial; selected Pareto-front trial) through the ONNX gate
    (``output`` default ``./STUDY.onnx``); see :func:`trainforge.tuning.pareto.export_study_trial`.

    ``log_to_run`` also logs the file to the study's parent run as ``onnx/model.onnx``. Returns the
    :class:`~trainforge.exporting.exporter.ExportReport`. Raises TrainforgeError for an unknown study or one with no
    complete trial.
    """
    from trainforge.tuning.pareto import export_study_trial

    return export_study_trial(study, None, output, storage=storage, tracking_uri=tracking_uri, opset=opset,
                              log_to_run=log_to_run)[0]
