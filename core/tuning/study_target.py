"""A study-wide trial target (``--study-trials N``): workers on any number of machines run trials until the
study holds exactly ``N`` finished (COMPLETE or PRUNED) trials.

Every worker repeats, holding a lock that all workers of the study share (:func:`trainforge.tracking.locks.storage_lock`
named after the study):

1. ``optuna.storages.fail_stale_trials`` (RDB storages): a RUNNING trial whose worker stopped sending
   heartbeats becomes FAIL and :class:`~trainforge.tuning.study.StaleTrialCallback` enqueues a WAITING copy.
2. Count finished (COMPLETE + PRUNED) and running trials. ``finished >= N``: stop. ``finished + running <
   N``: claim a trial (``study.ask`` pops a WAITING trial, e.g. a retry, before creating a new one), record
   its first heartbeat, release the lock, run it. Otherwise (the remaining trials are all running
   elsewhere) release the lock and look again after :data:`POLL_SECONDS`: each running trial either
   finishes or goes stale and is retried here.

A trial is run through ``study.optimize(n_trials=1)`` so that Optuna itself keeps the heartbeat thread
running, tells the state (``TrialPruned`` -> PRUNED, other exceptions -> FAIL and logged, Ctrl-C -> FAIL then
re-raised) and calls the callbacks, exactly as in a plain ``optimize`` loop.

The lock: PostgreSQL advisory lock (works across machines); a file lock beside a SQLite database or
journal file (one machine). Other RDBs (MySQL, ...) get no lock: the count is then best effort and
workers racing may overshoot by up to (workers - 1) trials.

Dead workers: with heartbeats (RDB storages) after ``TRAINFORGE_HEARTBEAT_GRACE`` seconds. Journal files
have no heartbeats; there a waiting worker fails a RUNNING trial whose owner (user attrs
:data:`HOST_ATTR`, :data:`PID_ATTR`) is a process of this machine that no longer exists, and enqueues
its retry the same way; a trial of a dead worker on another machine stays RUNNING (use ``--timeout``).

Failure guard: when the study holds more than ``N +`` :data:`EXTRA_FAILS` FAIL trials, the worker stops
with TrainforgeError (a deterministic error would otherwise be retried forever).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from trainforge.errors import TrainforgeError
from trainforge.tracking import liveness
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
EXTRA_FAILS = 3
HOST_ATTR, PID_ATTR, START_ATTR = tag.HOST, tag.PID, tag.PID_START


def mark_owner(trial: Any) -> None:
    """Record on ``trial`` which process runs it: user attrs ``trainforge.host``, ``trainforge.pid`` and
    ``trainforge.pid_start`` (its start time, see :mod:`trainforge.tracking.liveness`)."""
    me = liveness.this_process()
    trial.set_user_attr(HOST_ATTR, me.host)
    trial.set_user_attr(PID_ATTR, me.pid)
    trial.set_user_attr(START_ATTR, me.start)


def _heartbeat_storage(study: Any) -> Any:
    """The study's storage if it records heartbeats (Optuna's RDBStorage with an interval), else None."""
    storage = study._storage  # Optuna has no public accessor; optimize() uses the same attribute
    interval = getattr(storage, "get_heartbeat_interval", None)
    return storage if interval is not None and interval() is not None else None


def _fail_stale(study: Any) -> None:
    import optuna

    with warnings.catch_warnings():  # "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _fail_orphans(study: Any, running: Sequence[Any]) -> int:
    """Storages without heartbeats: FAIL (and retry) running trials owned by a dead process of this host."""
    import optuna
    from optuna.trial import TrialState

    from trainforge.tuning.study import MAX_RETRY, StaleTrialCallback

    failed = 0
    for trial in running:
        attrs = trial.user_attrs
        if liveness.alive(attrs.get(HOST_ATTR), attrs.get(PID_ATTR), attrs.get(START_ATTR)) is not False:
            continue  # running, or on another host (cannot be checked from here)
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished (or another worker failed it) meanwhile
        failed += 1
        StaleTrialCallback(MAX_RETRY)(study, study._storage.get_trial(trial._trial_id))
    return failed


def run_until(study: Any, objective: Callable[[Any], float], target: int, lock: Any, *,
              max_trials: int | None = None, timeout: float | None = None,
              callbacks: Sequence[Callable[[Any, Any], None]] = (), poll: float = POLL_SECONDS) -> int:
    """Run trials of ``study`` until it holds ``target`` finished trials; returns how many this call ran.

    ``lock``: the study's shared lock (``acquire()``/``release()``, see :mod:`trainforge.tracking.locks`).
    ``max_trials``: at most this many trials in this call (``None``: no cap). ``timeout`` (seconds): start
    no trial and stop waiting once it has passed. ``callbacks``: Optuna ``optimize`` callbacks.
    Raises TrainforgeError when the study holds more than ``target + EXTRA_FAILS`` FAIL trials;
    KeyboardInterrupt propagates after Optuna has marked the running trial FAIL.
    """
    import optuna
    from optuna.trial import TrialState

    heartbeats = _heartbeat_storage(study) is not None
    started, ran, waiting_since = time.monotonic(), 0, None
    while max_trials is None or ran < max_trials:
        if timeout is not None and time.monotonic() - started >= timeout:
            log.info("study %s: --timeout reached after %d trial(s) here", study.study_name, ran)
            break
        lock.acquire()
        held = [True]
        try:
            _fail_stale(study)
            trials = study.get_trials(deepcopy=False)
            states = [t.state for t in trials]
            finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
            failed = states.count(TrialState.FAIL)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if finished >= target:
                break
            if failed > target + EXTRA_FAILS:
                raise TrainforgeError(
                    f"study {study.study_name!r} has {failed} failed trials, more than --study-trials {target} + "
                    f"{EXTRA_FAILS}; stopping instead of retrying forever (see the trials' fail_reason)")
            if not heartbeats and finished + len(running) >= target and _fail_orphans(study, running):
                continue  # an orphan became FAIL + a WAITING retry: count again
            if finished + len(running) < target:
                waiting_since = None
                claimed = _Claimed(objective, lock, held)
                try:
                    study.optimize(claimed, n_trials=1, catch=(Exception,), callbacks=list(callbacks))
                except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
                    # Another worker declared this live trial dead (no heartbeat within the grace period, e.g.
                    # an overloaded machine), failed it and enqueued its retry: the result cannot be told.
                    if claimed.trial is None or not _finished_elsewhere(study, claimed.trial):
                        raise
                    log.warning("study %s: trial %d was declared dead by another worker while it ran (%s); "
                                "its result is dropped and its retry runs instead; raise "
                                "TRAINFORGE_HEARTBEAT_GRACE if this machine is that busy",
                                study.study_name, claimed.trial.number, exc)
                ran += 1
                continue
        finally:
            if held[0]:
                lock.release()
        if waiting_since is None:
            waiting_since = time.monotonic()
            log.info("study %s: %d finished, %d running elsewhere, target %d: waiting for them%s",
                     study.study_name, finished, len(running), target,
                     "" if heartbeats else " (journal storage: a dead worker on another machine is not detected)")
        time.sleep(poll)
    return ran


def _finished_elsewhere(study: Any, trial: Any) -> bool:
    from optuna.trial import TrialState

    return study._storage.get_trial(trial._trial_id).state == TrialState.FAIL


class _Claimed:
    """The objective as called by ``optimize`` right after ``ask``: record the owner and a first heartbeat
    (so the claimed trial is never without one), release the lock, then run the real objective."""

    def __init__(self, objective: Callable[[Any], float], lock: Any, held: list[bool]) -> None:
        self.objective, self.lock, self.held = objective, lock, held
        self.trial: Any = None

    def __call__(self, trial: Any) -> float:
        self.trial = trial
        try:
            storage = _heartbeat_storage(trial.study)
            if storage is not None:
                storage.record_heartbeat(trial._trial_id)
            mark_owner(trial)
        finally:
            self.held[0] = False
            self.lock.release()
        return self.objective(trial)
