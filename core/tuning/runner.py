"""Running a study's trials: in this process or in spawned worker processes, a count or a study-wide target.

Workers are processes, not threads (the GIL): ``multiprocessing`` with the *spawn* start method, so a worker
is a fresh interpreter (no forked torch/MLflow state) and works the same from a notebook. Each opens the
storage itself, loads the data once, and runs exactly its share of the trials (``study.optimize(n_trials=...)``
counts the trials it ran, whatever their state). Every trial records its process in the user attrs
``trainforge.host`` and ``trainforge.pid``.

A study-wide target (``--study-trials N``, :func:`run_until`): every worker repeats, holding a lock all
workers of the study share (:func:`trainforge.tracking.locks.storage_lock` named after the study):

1. ``optuna.storages.fail_stale_trials`` (RDB storages): a RUNNING trial whose worker stopped sending
   heartbeats becomes FAIL and :class:`~trainforge.tuning.study.StaleTrialCallback` enqueues a WAITING copy.
2. Count finished (COMPLETE + PRUNED) and running trials. ``finished >= N``: stop. ``finished + running <
   N``: claim a trial (``study.ask`` pops a WAITING trial, e.g. a retry, before creating a new one), record
   its first heartbeat, release the lock, run it. Otherwise (the remaining trials are all running
   elsewhere) release the lock and look again after :data:`POLL_SECONDS`.

A trial is run through ``study.optimize(n_trials=1)`` so that Optuna itself keeps the heartbeat thread
running, tells the state (``TrialPruned`` -> PRUNED, other exceptions -> FAIL, Ctrl-C -> FAIL then re-raised)
and calls the callbacks. The lock: PostgreSQL advisory lock (across machines); a file lock beside a SQLite
database or journal file (one machine); other RDBs none (workers racing may overshoot by up to workers - 1).
Dead workers: with heartbeats (RDB storages) after ``--heartbeat-grace`` seconds. Journal files have none;
there a waiting worker fails a RUNNING trial whose owner (:data:`HOST_ATTR`, :data:`PID_ATTR`) is a process
of this machine that no longer exists and enqueues its retry; a dead worker on another machine's trial
stays RUNNING (use ``--timeout``). When the study holds more than ``N +`` :data:`EXTRA_FAILS` FAIL trials,
the worker stops with TrainforgeError (a deterministic error would otherwise be retried forever).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainforge.errors import TrainforgeError
from trainforge.tracking import liveness
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
EXTRA_FAILS = 3
HOST_ATTR, PID_ATTR, START_ATTR = tag.HOST, tag.PID, tag.PID_START


@dataclass
class Plan:
    """What a worker process needs (picklable): the settings (:meth:`TuneSettings.to_json`), the study's
    parent run, and where to track."""

    settings: dict[str, Any]
    parent_run_id: str
    experiment: str
    max_epochs: int
    log_level: int = logging.WARNING


def run(plan: Plan, *, bundle: Any = None, study: Any = None) -> tuple[int, bool]:
    """Run the command's trials (``n_jobs`` from the settings: here, or in that many workers); returns
    ``(trials run by this command, interrupted)``. Ctrl-C/SIGTERM are caught here and reported as
    ``interrupted`` (finished trials stay in the storage); TrainforgeError as :func:`run_trials`."""
    s = plan.settings
    total, jobs, ran = _trials(s), int(s.get("n_jobs") or 1), [0]
    try:
        if jobs == 1:
            run_trials(plan, total, s.get("timeout"), 0, bundle=bundle, study=study, counter=ran)
        else:
            run_workers(plan, total, s.get("timeout"), jobs, counter=ran)
    except KeyboardInterrupt:
        log.warning("interrupted: finished trials are kept in study %s", s["study"])
        return ran[0], True
    return ran[0], False


def _trials(s: dict[str, Any]) -> int | None:
    from trainforge.tuning.settings import TuneSettings

    return TuneSettings.from_json(s).trials_to_run()


def run_trials(plan: Plan, n_trials: int | None, timeout: float | None, index: int, *, bundle: Any = None,
               study: Any = None, counter: list[int] | None = None) -> int:
    """Run ``n_trials`` trials (or until ``timeout`` seconds) of ``plan`` in this process; returns how many ran
    (also kept in ``counter[0]``, which survives an interrupt).

    With ``study_trials`` in the settings: run trials until the study holds that many finished trials, at most
    ``n_trials`` here (``None``: no cap), see :func:`run_until`.
    ``KeyboardInterrupt`` propagates after Optuna has marked the running trial FAIL; TrainforgeError when
    a ``study_trials`` study has too many failed trials.
    """
    import optuna

    from trainforge.run.api import load_data
    from trainforge.tracking import store as tracking
    from trainforge.tuning import study as study_mod
    from trainforge.tuning.deployment import for_worker
    from trainforge.tuning.objective import Objective, make_fitter
    from trainforge.tuning.space import space_of

    s = plan.settings
    seed = None if s.get("seed") is None else s["seed"] + index
    if study is None:
        storage = study_mod.open_storage(s["storage"], (s["heartbeat_interval"], s["heartbeat_grace"]))
        study = optuna.load_study(study_name=s["study"], storage=storage, sampler=study_mod.make_sampler(
            s["sampler"], seed), pruner=study_mod.make_pruner(s["pruner"], plan.max_epochs))
    deploy = for_worker(s, s["storage"], s["study"])
    space = space_of(s)
    experiment_id = tracking.setup(s.get("tracking_uri"), plan.experiment)
    bundle = bundle if bundle is not None else load_data(space.first_config(s["base"]))
    fitter = make_fitter(s, bundle, parent_run_id=plan.parent_run_id, experiment=plan.experiment,
                         experiment_id=experiment_id)
    objective = Objective(space, s["base"], s["metric"], s["study"], fitter, bundle,
                          extra_tags={tag.WORKER: str(index)}, deploy=deploy)
    ran = counter if counter is not None else [0]

    def count(_study: Any, _trial: Any) -> None:
        ran[0] += 1

    if s.get("study_trials") is not None:
        from trainforge.tracking.locks import storage_lock

        lock = storage_lock(s["storage"], f"study-{s['study']}")
        run_until(study, objective, s["study_trials"], lock, max_trials=n_trials, timeout=timeout,
                  callbacks=[count])
        return ran[0]

    def owned(trial: Any) -> float:
        mark_owner(trial)
        return objective(trial)

    study.optimize(owned, n_trials=n_trials, timeout=timeout, catch=(Exception,), callbacks=[count])
    return ran[0]


def _worker_main(plan: Plan, n_trials: int | None, timeout: float | None, index: int, threads: int,
                 queue: Any) -> None:
    """Entry point of a spawned worker process: run trials, report ``(index, status, detail)``.

    The worker starts with SIGINT ignored (see :func:`run_workers`) and takes Ctrl-C and SIGTERM
    (:mod:`trainforge.interrupts`) only inside the ``try`` below; once one arrived, later ones are ignored so
    they cannot break the clean-up (Optuna's FAIL write, MLflow's KILLED, the storage's connections) with a
    ``KeyboardInterrupt`` traceback.
    """
    from trainforge import interrupts

    ran = [0]
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupts.install()
        from trainforge.tracking.logs import configure, verbosity

        configure(verbosity(plan.log_level))  # as the command that spawned it
        import optuna
        import torch

        torch.set_num_threads(threads)
        if plan.settings.get("quiet", True):
            optuna.logging.set_verbosity(optuna.logging.ERROR)
        queue.put((index, "ok", run_trials(plan, n_trials, timeout, index, counter=ran)))
    except KeyboardInterrupt as exc:
        _ignore_signals()
        queue.put((index, "terminated" if isinstance(exc, interrupts.Terminated) else "interrupted", ran[0]))
    except TrainforgeError as exc:
        queue.put((index, "error", str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported by the parent process
        log.exception("worker %d failed", index)
        queue.put((index, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        _ignore_signals()  # the interpreter's exit (atexit, finalizers) must not be interrupted either


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run_workers(plan: Plan, n_trials: int | None, timeout: float | None, jobs: int,
                counter: list[int] | None = None) -> int:
    """Run trials in ``jobs`` spawned processes (not threads: the GIL) sharing the study's storage.

    ``n_trials`` is split evenly (worker ``i`` gets ``n // jobs`` plus one of the remainder; ``None``: no
    per-worker limit, e.g. with ``study_trials``); each worker
    uses ``cpu_count // jobs`` torch threads. On Ctrl-C the workers (which share the terminal's process
    group) get 10 s to record their interrupted trials, then SIGINT, then termination. SIGTERM to this
    process is forwarded to the workers (a scheduler signals only the pid it started). A worker that was
    interrupted or terminated makes this raise ``KeyboardInterrupt`` / ``Terminated`` once all have ended.
    """
    import multiprocessing

    from trainforge import interrupts

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shares = [None] * jobs if n_trials is None else [n_trials // jobs + (i < n_trials % jobs) for i in range(jobs)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    procs = [ctx.Process(target=_worker_main, args=(plan, n, timeout, i, threads, queue), name=f"trainforge-tune-{i}")
             for i, n in enumerate(shares) if n is None or n > 0]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: no Ctrl-C during a worker's start-up
    try:
        for proc in procs:
            proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        while any(p.is_alive() for p in procs):
            for proc in procs:
                proc.join(timeout=0.5)
            if deadline is not None and time.monotonic() > deadline + 3600:
                break  # a worker hung far past the timeout: stop waiting
    except KeyboardInterrupt as exc:
        if isinstance(exc, interrupts.Terminated):
            for proc in procs:
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)
        _stop(procs)
        raise
    results = []
    while len(results) < len(procs) and not queue.empty():
        results.append(queue.get())
    ran = sum(int(detail) for _, status, detail in results if status in ("ok", "interrupted", "terminated"))
    if counter is not None:
        counter[0] = ran
    errors = [f"worker {i}: {detail}" for i, status, detail in results if status == "error"]
    if any(status == "terminated" for _, status, _ in results):
        interrupts.record(signal.SIGTERM)
        raise interrupts.Terminated("a worker was terminated (SIGTERM)")
    if any(status == "interrupted" for _, status, _ in results):
        raise KeyboardInterrupt
    if errors:
        raise TrainforgeError("; ".join(errors))
    return ran


def _stop(procs: list[Any]) -> None:
    for grace, action in ((10.0, None), (20.0, "int"), (5.0, "term")):
        end = time.monotonic() + grace
        while any(p.is_alive() for p in procs) and time.monotonic() < end:
            time.sleep(0.2)
        for proc in procs:
            if proc.is_alive() and action == "int":
                os.kill(proc.pid, signal.SIGINT)
            elif proc.is_alive() and action == "term":
                proc.terminate()
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
                                "--heartbeat-grace if this machine is that busy",
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
