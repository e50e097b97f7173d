"""K fold fits of one configuration in lockstep, epoch by epoch, so a pruner sees the mean over folds.

Optuna's ``OptunaSearchCV`` prunes this way (``optuna_integration/sklearn/sklearn.py``, ``_Objective._partial_fit_and_score``
per fold, then ``trial.report(mean of the fold scores, step)`` and ``should_prune`` after every step). Here each fold is a
plain :func:`trainforge.run.api.train` run in its own greenlet (the ``greenlet`` package: a coroutine with its own
stack, on the calling thread). After every epoch a :class:`LockstepPruning` callback hands the fold's value to
:func:`fit_folds`, which resumes the folds one after another; once every running fold has posted epoch ``e``, it
reports the mean over the K folds of the monitored value at each fold's best epoch so far (a fold that stopped
early keeps its final value) and asks the pruner; every fold then continues or raises ``optuna.TrialPruned`` (a
pruned trial stops every fold).

One thread computes every fold's epochs, as K sequential runs would: no fold competes with another for the
cores or for torch's intra-op threads (fold threads did: 1.24x-1.6x the sequential time, see
``benchmarks/RESULTS_cv.md``). Each fold keeps its own torch RNG state (CPU, and CUDA once initialised) and its own
MLflow active-run stack across the switches, so a fold draws its initial weights, its dropout masks and its
shuffles exactly as a lone run with the same seed would, and its fold scores are those of a sequential fit.

Cost: the K models, their optimizer state and their K training splits live at once (about
:func:`lockstep_bytes`); above ``max_bytes`` :func:`fit_folds` falls back to fold by fold, reporting the cumulative
mean after each finished fold (step = fold index), and says which mode ran.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from trainforge.contracts import Callback

log = logging.getLogger(__name__)

#: above this estimate (bytes) of K models + optimizer state + K training splits, folds run one after another
LOCKSTEP_MAX_BYTES = 2 << 30


class FoldAborted(RuntimeError):
    """Another fold of the same trial failed: this one stops too."""


def _context() -> tuple[Any, ...]:
    """What a fold keeps to itself across a switch: the torch RNG states and MLflow's active-run stack."""
    import torch

    from trainforge.tracking import active_runs

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, active_runs.active_runs()


def _restore(saved: tuple[Any, ...]) -> None:
    import torch

    from trainforge.tracking import active_runs

    cpu, cuda, runs = saved
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    active_runs.set_active_runs(runs)


def _switch(target: Any, *args: Any, throw: BaseException | None = None) -> Any:
    """Switch to greenlet ``target`` (passing ``args``, or raising ``throw`` in it); back here, this greenlet's
    own :func:`_context` is in force again. Returns what was switched back to this greenlet."""
    mine = _context()
    try:
        return target.throw(throw) if throw is not None else target.switch(*args)
    finally:
        _restore(mine)


class LockstepPruning(Callback):
    """One fold's side of the lockstep: after each epoch, the monitored ``metric`` at the best epoch so far goes
    to the driving greenlet ``hub``; what it sends back says whether the trial is pruned."""

    def __init__(self, hub: Any, fold: int, metric: str) -> None:
        self.hub, self.fold, self.metric = hub, fold, metric
        self.value: float | None = None

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        import optuna

        best = trainer.history[trainer.best_epoch - 1] if trainer.best_epoch else metrics
        self.value = float(best.get(self.metric, metrics[self.metric]))
        if _switch(self.hub, ("epoch", self.fold, epoch)):
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: the mean {self.metric} over folds")


def lockstep_bytes(n_params: int, bundles: list[Any]) -> int:
    """Estimated bytes of a lockstep fit: per fold float32 weights, gradients, two Adam moments and the best
    epoch's copy (5 x 4 bytes a parameter), plus its training and validation tensors."""
    data = sum(int(b.train.x.nelement() + b.val.x.nelement()) * 4 for b in bundles if hasattr(b.train, "x"))
    return 20 * int(n_params) * len(bundles) + data


def mode_for(n_params: int, bundles: list[Any], max_bytes: int = LOCKSTEP_MAX_BYTES) -> str:
    """``"lockstep"`` when :func:`lockstep_bytes` fits in ``max_bytes`` (bytes), else ``"sequential"``."""
    return "lockstep" if lockstep_bytes(n_params, bundles) <= max_bytes else "sequential"


def fit_folds(train_fold: Callable[[int, Any, list[Callback]], Any], bundles: list[Any], metric: str,
              report: Callable[[int, float], bool], *, n_params: int = 0,
              max_bytes: int = LOCKSTEP_MAX_BYTES) -> tuple[list[Any], str]:
    """Fit every fold of one configuration with pruning over folds; return the fold results and the mode.

    ``train_fold(i, bundle, callbacks) -> TrainResult`` runs fold ``i`` (a :func:`trainforge.run.api.train`
    call). ``report(step, mean) -> prune?``: e.g. ``trial.report`` then ``trial.should_prune``. The mode is
    ``"lockstep"`` (the folds as greenlets on this thread, step = epoch) unless :func:`lockstep_bytes` exceeds
    ``max_bytes``, then ``"sequential"`` (step = fold index, the cumulative mean). Raises ``optuna.TrialPruned`` when pruned and
    the first fold's error otherwise.
    """
    import optuna

    if mode_for(n_params, bundles, max_bytes) == "sequential":
        log.info("cv: folds run one after another (lockstep would hold ~%d MiB)",
                 lockstep_bytes(n_params, bundles) >> 20)
        results, scores = [], []
        for i, bundle in enumerate(bundles):
            results.append(train_fold(i, bundle, []))
            row = results[-1].history[max(results[-1].best_epoch, 1) - 1]
            scores.append(float(row[metric]))
            if report(i, sum(scores) / len(scores)):
                raise optuna.TrialPruned(f"pruned after fold {i}: the mean {metric} over the folds so far")
        return results, "sequential"
    import greenlet

    hub, k = greenlet.getcurrent(), len(bundles)
    callbacks = [LockstepPruning(hub, i, metric) for i in range(k)]

    def body(i: int) -> tuple[str, int, Any]:
        from trainforge.tracking import active_runs

        stack, last = active_runs.active_runs()  # the caller's, as a copy: the fold's start_run pushes onto its own
        active_runs.set_active_runs((list(stack), last))
        try:
            return "done", i, train_fold(i, bundles[i], [callbacks[i]])
        except BaseException as exc:  # noqa: BLE001 - handed to fit_folds, which raises the first
            return "error", i, exc

    folds = [greenlet.greenlet(body, parent=hub) for _ in range(k)]
    posted: dict[int, tuple[str, int, Any]] = {}  # fold -> what it last handed back: (kind, fold, epoch|result|error)
    results: list[Any] = [None] * k
    errors: dict[int, BaseException] = {}
    try:
        _advance(folds, range(k), posted, lambda i: (i,))  # each fold up to its first epoch's end (or its end)
        while True:
            for kind, i, value in posted.values():
                if kind == "done":
                    results[i] = value
                elif kind == "error":
                    errors[i] = value
            failure = next((e for e in errors.values() if _failed(e)), None)
            if failure is not None:
                raise failure
            waiting = [i for i, (kind, _, _) in posted.items() if kind == "epoch"]
            if not waiting:
                break
            epoch = posted[waiting[0]][2]
            scores = [cb.value if cb.value is not None else float("nan") for cb in callbacks]
            prune = bool(report(epoch, sum(scores) / k))
            _advance(folds, waiting, posted, lambda _i, decided=prune: (decided,))
    except BaseException as exc:  # a fold's failure, the report's, or Ctrl-C: every fold still waiting stops
        _abort(folds, [i for i, (kind, _, _) in posted.items() if kind == "epoch" and not folds[i].dead], exc,
               posted)
        raise
    pruned = [e for e in errors.values() if isinstance(e, optuna.TrialPruned)]
    if pruned:
        raise pruned[0]
    return results, "lockstep"


def _advance(folds: list[Any], indices: Any, posted: dict[int, Any], args: Callable[[int], tuple[Any, ...]]) -> None:
    """Resume the folds ``indices`` in turn (fold ``i`` gets ``args(i)``), each up to its next epoch's end or its
    end, recording what it hands back in ``posted``; a fold that fails (not pruned) stops the round, so no
    other fold trains another epoch before the failure is handled."""
    for i in indices:
        posted[i] = _switch(folds[i], *args(i))
        kind, _, value = posted[i]
        if kind == "error" and _failed(value):
            return


def _failed(exc: BaseException) -> bool:
    """A fold's error that fails the trial: anything but its pruning or its stop because another fold failed."""
    import optuna

    return not isinstance(exc, (optuna.TrialPruned, FoldAborted))


def _abort(folds: list[Any], waiting: list[int], exc: BaseException, posted: dict[int, Any]) -> None:
    """Stop every fold in ``waiting`` (suspended at an epoch's end) because of ``exc``: Ctrl-C, SIGTERM and the
    like are raised in each as they are (their runs end KILLED), anything else as :class:`FoldAborted`."""
    for i in waiting:
        if folds[i].dead:
            continue
        stop = copy.copy(exc) if isinstance(exc, KeyboardInterrupt) else FoldAborted(
            f"fold {i} stopped: another fold failed ({type(exc).__name__}: {exc})")
        posted[i] = _switch(folds[i], throw=stop)
