"""Optuna storages, samplers, pruners, and the study <-> MLflow parent-run link.

Storage (``--storage``):

- default: a journal file, ``mlruns/optuna/journal.log`` under the working directory (Optuna's
  ``JournalStorage`` + ``JournalFileBackend``). Optuna recommends it over SQLite for several processes on
  one machine: appends under a file lock, no "database is locked" retries (Optuna docs, "Journal
  storage"; RDB tutorial note on SQLite and concurrency).
- a path ending in ``.log``, ``.journal`` or ``.jsonl``: a journal file there.
- ``sqlite:///path.db``, ``postgresql://...``, ``mysql+pymysql://...`` (any SQLAlchemy URL): Optuna's
  ``RDBStorage``, with heartbeats: a running trial's process records one every
  ``TRAINFORGE_HEARTBEAT_INTERVAL`` seconds (default :data:`HEARTBEAT_INTERVAL`); a trial without one for
  ``TRAINFORGE_HEARTBEAT_GRACE`` seconds (default :data:`HEARTBEAT_GRACE`) is marked FAIL by the next
  worker that starts a trial, and :class:`StaleTrialCallback` enqueues a copy (at most :data:`MAX_RETRY`
  times) and ends its MLflow child run FAILED. Journal files have no heartbeat: such a trial stays
  RUNNING (``--study-trials`` workers on the same machine still recover it, see
  :mod:`trainforge.tuning.study_target`).

The study is the MLflow parent run: its id is the study user attr ``mlflow_parent_run_id``. The process
that *creates* the study (an atomic step in every Optuna storage: a second creator gets
``DuplicatedStudyError``) creates the parent run and stores its id; other processes wait for the attr.
Should the creator die in between, a late process creates a parent itself, sets the attr only if still
absent and re-reads it; a loser deletes its own run, so the study never ends with two parents.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

from trainforge.errors import ConfigError, TrainforgeError
from trainforge.tracking import tags as tag
from trainforge.tracking.locks import sqlite_file

log = logging.getLogger(__name__)

DEFAULT_STORAGE = str(Path("mlruns") / "optuna" / "journal.log")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
HEARTBEAT_INTERVAL, HEARTBEAT_GRACE = 30, 120  # seconds (RDB storages only); env vars override them
HEARTBEAT_ENV = ("TRAINFORGE_HEARTBEAT_INTERVAL", "TRAINFORGE_HEARTBEAT_GRACE")
MAX_RETRY = 2  # re-runs of a trial whose worker died
PARENT_ATTR = "mlflow_parent_run_id"
SETTINGS_ATTR = tag.SETTINGS
PARENT_WAIT_SECONDS = 60.0
#: Study names double as MLflow run and registered-model names: keep them to safe characters.
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")
PRUNERS = ("median", "hyperband", "successive-halving", "none")


def check_study_name(name: str) -> str:
    """Return ``name`` or raise ConfigError: 1-128 characters, letters, digits, ``_ . -``, no leading symbol."""
    if not isinstance(name, str) or not STUDY_NAME.match(name):
        raise ConfigError(f"bad study name {name!r}: use 1-128 letters, digits, '_', '.' or '-', "
                          "starting with a letter or digit")
    return name


def heartbeat_settings() -> tuple[float, float]:
    """``(interval, grace)`` in seconds for RDB storages: ``$TRAINFORGE_HEARTBEAT_INTERVAL`` and
    ``$TRAINFORGE_HEARTBEAT_GRACE``, else :data:`HEARTBEAT_INTERVAL` (30) and :data:`HEARTBEAT_GRACE` (120).

    A dead worker's trial is detected ``grace`` to ``grace + interval`` seconds after its last heartbeat; a
    short interval costs one small write per running trial per interval. Raises ConfigError for a value
    that is not a positive finite number, or a grace period not longer than the interval (a live trial
    would be declared dead).
    """
    import math
    import os

    values = []
    for env, default in zip(HEARTBEAT_ENV, (HEARTBEAT_INTERVAL, HEARTBEAT_GRACE), strict=True):
        raw = os.environ.get(env, "").strip()
        try:
            value = float(raw) if raw else float(default)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{env}={raw!r}: give a positive number of seconds (default {default})")
        values.append(int(value) if value.is_integer() else value)
    interval, grace = values
    if grace <= interval:
        raise ConfigError(f"{HEARTBEAT_ENV[1]}={grace} must be longer than {HEARTBEAT_ENV[0]}={interval} "
                          "(seconds), or live trials would be declared dead")
    return interval, grace


class StaleTrialCallback:
    """Optuna's heartbeat-stale-trial callback, plus MLflow bookkeeping.

    Called by ``optuna.storages.fail_stale_trials`` for each trial it marked FAIL because its worker
    stopped sending heartbeats: Optuna's ``RetryHeartbeatStaleTrialCallback(max_retry)`` enqueues a WAITING
    copy (same params, system attr ``failed_trial`` = the original trial's number), then the trial's MLflow
    child run (user attr ``mlflow_run_id``) is tagged ``trainforge.trial_state=FAIL`` and, if still
    RUNNING, ended FAILED. MLflow errors are logged, never raised.
    """

    def __init__(self, max_retry: int | None = MAX_RETRY) -> None:
        import optuna

        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: Any, trial: Any) -> None:
        self.retry(study, trial)
        log.warning("trial %d of study %s: its worker stopped sending heartbeats; marked FAIL and retried",
                    trial.number, study.study_name)
        from trainforge.tuning.objective import finish_child  # logs MLflow errors itself, never raises them

        finish_child(trial.user_attrs.get("mlflow_run_id"), "FAIL", trial,
                     reason="worker died (no heartbeat within the grace period)")


def open_storage(url: str | None = None) -> Any:
    """An Optuna storage object for ``url`` (see the module docstring).

    Raises TrainforgeError on a bad URL, ConfigError on bad heartbeat settings (:func:`heartbeat_settings`).
    """
    import optuna

    from trainforge.tracking.locks import driver_url, storage_lock

    url = url or DEFAULT_STORAGE
    interval, grace = heartbeat_settings()
    try:
        if "://" not in url:
            if not url.endswith(JOURNAL_SUFFIXES):
                raise ConfigError(
                    f"bad storage {url!r}: give a URL (sqlite:///study.db, postgresql://user@host/db, "
                    f"mysql://...) or a journal file path ending in {', '.join(JOURNAL_SUFFIXES)}")
            from trainforge.tuning.journal import open_journal  # refuses a torn journal in one line

            return open_journal(url)
        scheme = url.split("://", 1)[0].lower()
        if scheme.startswith("sqlite"):
            if db := sqlite_file(url):  # a SQLite file: create its folder
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            engine = {"connect_args": {"timeout": 60}}  # wait for a writer instead of "database is locked"
        else:
            engine = {"pool_pre_ping": True}
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with storage_lock(url):  # processes starting together must not both create the schema
                return optuna.storages.RDBStorage(driver_url(url), engine_kwargs=engine, heartbeat_interval=interval,
                                                  grace_period=grace,
                                                  heartbeat_stale_trial_callback=StaleTrialCallback(MAX_RETRY))
    except TrainforgeError:
        raise
    except Exception as exc:  # SQLAlchemy ArgumentError / NoSuchModuleError / OperationalError, OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainforgeError(f"cannot open Optuna storage {url!r}: {first}") from None


def make_sampler(name: str, seed: int | None) -> Any:
    """``tpe`` (multivariate, grouped for conditional spaces, constant liar for parallel workers),
    ``random``, ``cmaes`` (categoricals fall back to random sampling), ``gp`` (Gaussian process) or ``nsga2``
    (Optuna's NSGAIISampler, Deb et al. 2002; multi-objective, population 50)."""
    import optuna

    if name == "tpe":
        with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                              n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401 - Optuna imports it only when the first trial is sampled
        except ImportError:
            raise ConfigError("--sampler cmaes needs the cmaes package: pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, max_epochs: int) -> Any:
    """``median`` (MedianPruner: stop a trial whose best-so-far value is worse than the median of earlier
    trials at the same epoch, after 4 complete trials and 3 warm-up epochs), ``hyperband`` /
    ``successive-halving`` (min resource 2 epochs, max ``max_epochs``, reduction factor 3; Li et al.
    2018) or ``none``."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=2, max_resource=max(max_epochs, 3), reduction_factor=3)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def open_study(storage: Any, name: str, direction: str | list[str] | None, sampler: Any = None,
               pruner: Any = None) -> tuple[Any, bool]:
    """Create study ``name`` or load it; returns ``(study, created)``.

    ``direction``: ``"maximize"``/``"minimize"``, or a list of them for a multi-objective study
    (Optuna's ``directions=``). ``None`` loads an existing study only (ConfigError if there is none). A
    loaded study whose direction(s) differ raises ConfigError.
    """
    import optuna

    check_study_name(name)
    if direction is not None:
        how = {"directions": direction} if isinstance(direction, list) else {"direction": direction}
        try:
            study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                        load_if_exists=False, **how)
            return study, True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        known = ", ".join(optuna.get_all_study_names(storage)) or "(none)"
        raise ConfigError(f"no study {name!r} in this storage; studies: {known}") from None
    stored = [d.name.lower() for d in study.directions]
    if direction is not None and stored != (direction if isinstance(direction, list) else [direction]):
        raise ConfigError(f"study {name!r} was created to {'/'.join(stored)} its objective(s); "
                          f"{'/'.join(direction) if isinstance(direction, list) else direction} conflicts "
                          "(start a new --study)")
    return study, False


def create_parent_run(experiment_id: str, study_name: str, tags: dict[str, str]) -> str:
    """Create (without activating) the parent run of a study and return its id.

    It gets the context tags ``mlflow.start_run`` gives its children (``mlflow.source.name``,
    ``mlflow.source.type``, ``mlflow.user``, git commit when there is one), through MLflow's own context
    registry (``mlflow.tracking.context.registry.resolve_tags``, what ``start_run`` calls).
    """
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    from trainforge.tracking.stale import (
        process_tags,  # host/pid: `trainforge runs --stale` finds a dead parent
    )

    run = MlflowClient().create_run(experiment_id, run_name=study_name, tags=resolve_tags({
        tag.COMMAND: "tune", tag.ROLE: "study", tag.STUDY: study_name, **process_tags(), **tags}))
    return run.info.run_id


def ensure_parent_run(study: Any, created: bool, experiment_id: str, tags: dict[str, str],
                      wait: float = PARENT_WAIT_SECONDS) -> str:
    """Return the study's parent run id, creating the run when this process created the study.

    Race handling: see the module docstring. A parent run that was deleted in MLflow is restored; one the
    tracking store does not know raises TrainforgeError (another ``--tracking-uri`` was used).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if created:
        run_id = create_parent_run(experiment_id, study.study_name, tags)
        study.set_user_attr(PARENT_ATTR, run_id)
        return run_id
    deadline = time.monotonic() + wait
    while (run_id := study.user_attrs.get(PARENT_ATTR)) is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the creator is between create_study and set_user_attr
    if run_id is None:
        mine = create_parent_run(experiment_id, study.study_name, tags)
        if study.user_attrs.get(PARENT_ATTR) is None:
            study.set_user_attr(PARENT_ATTR, mine)
        time.sleep(0.5)  # let a concurrent writer's attr land before the re-read decides the winner
        run_id = study.user_attrs[PARENT_ATTR]
        if run_id != mine:
            client.delete_run(mine)
            log.info("study %s already has parent run %s; deleted duplicate %s", study.study_name, run_id, mine)
    try:
        run = client.get_run(run_id)
    except Exception:
        from trainforge.tracking.store import tracking_uri

        raise TrainforgeError(f"study {study.study_name!r} belongs to MLflow run {run_id}, which tracking store "
                              f"{tracking_uri()!r} does not have; pass the --tracking-uri used before") from None
    if run.info.lifecycle_stage == "deleted":
        client.restore_run(run_id)
    return run_id


def trial_counts(study: Any) -> dict[str, int]:
    """``{"n_complete", "n_pruned", "n_fail", "n_running", "n_waiting"}`` over all the study's trials."""
    from optuna.trial import TrialState

    counts = {f"n_{s.name.lower()}": 0 for s in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[f"n_{trial.state.name.lower()}"] += 1
    return counts
