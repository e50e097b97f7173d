"""Running trials: in this process, or in worker processes that share the study's storage.

Workers are processes, not threads (the GIL): ``multiprocessing`` with the *spawn* start method, so
a worker is a fresh interpreter (no forked torch/MLflow state) and works the same from a notebook.
Each worker opens the storage itself, loads the data once, and runs exactly its share of the trials
(``study.optimize(n_trials=...)`` counts the trials it ran, whatever their state) or, with a study-wide
target (``Plan.study_trials``), runs trials until the study holds that many finished ones
(:mod:`trainforge.tuning.study_target`). Every trial records its process in the user attrs ``trainforge.host``
and ``trainforge.pid``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from trainforge.errors import TrainforgeError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a worker process needs (picklable): the study, its settings and where to track."""

    study: str
    storage: str | None
    settings: dict[str, Any]
    parent_run_id: str
    experiment: str
    tracking_uri: str | None
    seed: int | None
    quiet: bool
    max_epochs: int
    log_level: int = logging.WARNING
    study_trials: int | None = None  # run until the study holds this many finished trials (all workers)


def run_trials(plan: Plan, n_trials: int | None, timeout: float | None, index: int, *, bundle: Any = None,
               study: Any = None, counter: list[int] | None = None) -> int:
    """Run ``n_trials`` trials (or until ``timeout`` seconds) of ``plan`` in this process; returns how many ran
    (also kept in ``counter[0]``, which survives an interrupt).

    With ``plan.study_trials``: run trials until the study holds that many finished trials, at most
    ``n_trials`` here (``None``: no cap), see :func:`trainforge.tuning.study_target.run_until`.
    ``KeyboardInterrupt`` propagates after Optuna has marked the running trial FAIL; TrainforgeError when
    a ``study_trials`` study has too many failed trials.
    """
    import optuna

    from trainforge.run.api import load_data
    from trainforge.tracking import store as tracking
    from trainforge.tuning import study as study_mod
    from trainforge.tuning.objective import Objective
    from trainforge.tuning.objectives import for_worker
    from trainforge.tuning.search import SearchSpace

    s = plan.settings
    seed = None if plan.seed is None else plan.seed + index
    sampler = study_mod.make_sampler(s["sampler"], seed)
    pruner = study_mod.make_pruner(s["pruner"], plan.max_epochs)
    if study is None:
        study = optuna.load_study(study_name=plan.study, storage=study_mod.open_storage(plan.storage),
                                  sampler=sampler, pruner=pruner)
    deploy = for_worker(s, plan.storage, plan.study)
    space = SearchSpace(list(s["models"]), list(s["optimizers"]), s["overrides"],
                        quantization=bool(deploy and deploy.search_quantization))
    tracking.setup(plan.tracking_uri, plan.experiment)
    if bundle is None:
        from trainforge import config as config_mod
        from trainforge.tuning.search import Recorder, merge_sample

        cfg = config_mod.resolve(merge_sample(s["base"], space.sample(Recorder(), model=space.models[0],
                                                                      optimizer=space.optimizers[0])))
        bundle = load_data(cfg)
    objective = Objective(space, s["base"], s["metric"], plan.study, plan.parent_run_id, bundle,
                          tracking_uri=plan.tracking_uri, experiment=plan.experiment, quiet=True,
                          extra_tags={tag.WORKER: str(index)}, deploy=deploy)
    ran = counter if counter is not None else [0]

    def count(_study: Any, _trial: Any) -> None:
        ran[0] += 1

    if plan.study_trials is not None:
        from trainforge.tracking.locks import storage_lock
        from trainforge.tuning.study_target import run_until

        lock = storage_lock(plan.storage or study_mod.DEFAULT_STORAGE, f"study-{plan.study}")
        run_until(study, objective, plan.study_trials, lock, max_trials=n_trials, timeout=timeout,
                  callbacks=[count])
        return ran[0]

    from trainforge.tuning.study_target import mark_owner

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
        logging.basicConfig(level=plan.log_level, format="%(levelname)s %(name)s: %(message)s")
        import optuna
        import torch

        torch.set_num_threads(threads)
        if plan.quiet:
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
    per-worker limit, e.g. with ``plan.study_trials``); each worker
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
