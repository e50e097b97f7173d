"""The Optuna side of a study: storages, samplers, pruners, creating or loading a study, counting its trials.

Storage (``--storage``):

- default: a journal file, ``mlruns/optuna/journal.log`` under the working directory (Optuna's
  ``JournalStorage`` + ``JournalFileBackend``). Optuna recommends it over SQLite for several processes on
  one machine: appends under a file lock, no "database is locked" retries (Optuna docs, "Journal
  storage"; RDB tutorial note on SQLite and concurrency).
- a path ending in ``.log``, ``.journal`` or ``.jsonl``: a journal file there.
- ``sqlite:///path.db``, ``postgresql://...``, ``mysql+pymysql://...`` (any SQLAlchemy URL): Optuna's
  ``RDBStorage``, with heartbeats: a running trial's process records one every ``--heartbeat-interval``
  seconds (default :data:`HEARTBEAT_INTERVAL`); a trial without one for ``--heartbeat-grace`` seconds
  (default :data:`HEARTBEAT_GRACE`) is marked FAIL by the next
  worker that starts a trial, and :class:`StaleTrialCallback` enqueues a copy (at most :data:`MAX_RETRY`
  times) and ends its MLflow child run FAILED. Journal files have no heartbeat: such a trial stays
  RUNNING (``--study-trials`` workers on the same machine still recover it, see
  :mod:`trainforge.tuning.runner`).

The study's MLflow side (its parent run, the trials' child runs) is :mod:`trainforge.tuning.parent_run`'s.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

from trainforge.errors import ConfigError, TrainforgeError
from trainforge.tracking import tags as tag
from trainforge.tracking.locks import sqlite_file

log = logging.getLogger(__name__)

DEFAULT_STORAGE = str(Path("mlruns") / "optuna" / "journal.log")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
#: seconds (RDB storages only): ``--heartbeat-interval``/``--heartbeat-grace`` defaults
HEARTBEAT_INTERVAL, HEARTBEAT_GRACE = 30, 120
MAX_RETRY = 2  # re-runs of a trial whose worker died
SETTINGS_ATTR = tag.SETTINGS
#: Study names double as MLflow run and registered-model names: keep them to safe characters.
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_study_name(name: str) -> str:
    """Return ``name`` or raise ConfigError: 1-128 characters, letters, digits, ``_ . -``, no leading symbol."""
    if not isinstance(name, str) or not STUDY_NAME.match(name):
        raise ConfigError(f"bad study name {name!r}: use 1-128 letters, digits, '_', '.' or '-', "
                          "starting with a letter or digit")
    return name


def stored_settings(storage: Any, name: str | None) -> dict[str, Any]:
    """The settings kept on study ``name`` (user attr :data:`SETTINGS_ATTR`), ``{}`` when there is no such study."""
    import optuna

    if name is None or check_study_name(name) not in optuna.get_all_study_names(storage):
        return {}
    return dict(optuna.load_study(study_name=name, storage=storage).user_attrs.get(SETTINGS_ATTR) or {})


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
        from trainforge.tuning.parent_run import finish_child  # logs MLflow errors itself, never raises them

        finish_child(trial.user_attrs.get("mlflow_run_id"), "FAIL", trial,
                     reason="worker died (no heartbeat within the grace period)")


def open_storage(url: str | None = None, heartbeats: tuple[float, float] = (HEARTBEAT_INTERVAL, HEARTBEAT_GRACE)) -> Any:
    """An Optuna storage object for ``url`` (see the module docstring); ``heartbeats``: ``(interval, grace)``
    in seconds for RDB storages (checked by :class:`~trainforge.tuning.settings.TuneSettings`).

    Raises TrainforgeError on a bad URL.
    """
    import optuna

    from trainforge.tracking.locks import driver_url, storage_lock

    url = url or DEFAULT_STORAGE
    interval, grace = heartbeats
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


def _tpe(seed: int | None, max_epochs: int) -> Any:
    import optuna

    with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=8)


def _cmaes(seed: int | None, max_epochs: int) -> Any:
    import optuna

    try:
        import cmaes  # noqa: F401 - Optuna imports it only when the first trial is sampled
    except ImportError:
        raise ConfigError("--sampler cmaes needs the cmaes package: pip install cmaes") from None
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _optuna(kind: str, name: str, **kwargs: Any) -> Any:
    """A factory ``(seed, max_epochs) -> optuna.<kind>.<name>(**kwargs)``; ``seed``/``max_epochs`` in kwargs
    are placeholders filled at the call."""
    def build(seed: int | None, max_epochs: int) -> Any:
        import optuna

        filled = {k: seed if v == "seed" else max(max_epochs, 3) if v == "max_epochs" else v for k, v in kwargs.items()}
        return getattr(getattr(optuna, kind), name)(**filled)

    return build


#: ``--sampler`` name -> factory ``(seed, max_epochs)``: ``tpe`` (multivariate, grouped for conditional
#: spaces, constant liar for parallel workers), ``random``, ``cmaes`` (categoricals fall back to random
#: sampling), ``gp`` (Gaussian process) or ``nsga2`` (NSGAIISampler, Deb et al. 2002; population 50)
SAMPLERS: dict[str, Any] = {
    "tpe": _tpe,
    "random": _optuna("samplers", "RandomSampler", seed="seed"),
    "cmaes": _cmaes,
    "gp": _optuna("samplers", "GPSampler", seed="seed", warn_independent_sampling=False),
    "nsga2": _optuna("samplers", "NSGAIISampler", seed="seed"),
}
#: ``--pruner`` name -> factory ``(seed, max_epochs)``: ``median`` (stop a trial whose best-so-far value is
#: worse than the median of earlier trials at the same epoch, after 4 complete trials and 3 warm-up
#: epochs), ``hyperband`` / ``successive-halving`` (min resource 2 epochs, max ``max_epochs``, reduction
#: factor 3; Li et al. 2018) or ``none``
PRUNERS: dict[str, Any] = {
    "median": _optuna("pruners", "MedianPruner", n_startup_trials=4, n_warmup_steps=3),
    "hyperband": _optuna("pruners", "HyperbandPruner", min_resource=2, max_resource="max_epochs", reduction_factor=3),
    "successive-halving": _optuna("pruners", "SuccessiveHalvingPruner", min_resource=2, reduction_factor=3),
    "none": _optuna("pruners", "NopPruner"),
}


def make_sampler(name: str, seed: int | None) -> Any:
    """The :data:`SAMPLERS` entry ``name`` seeded with ``seed``; ConfigError for an unknown name."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed, 0)


def make_pruner(name: str, max_epochs: int) -> Any:
    """The :data:`PRUNERS` entry ``name`` for trials of at most ``max_epochs``; ConfigError for an unknown name."""
    if name not in PRUNERS:
        raise ConfigError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    return PRUNERS[name](None, max_epochs)


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


def trial_counts(study: Any) -> dict[str, int]:
    """``{"n_complete", "n_pruned", "n_fail", "n_running", "n_waiting"}`` over all the study's trials."""
    from optuna.trial import TrialState

    counts = {f"n_{s.name.lower()}": 0 for s in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[f"n_{trial.state.name.lower()}"] += 1
    return counts
