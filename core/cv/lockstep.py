"""K fold fits of one configuration in lockstep, epoch by epoch, so a pruner sees the mean over folds.

Optuna's ``OptunaSearchCV`` prunes this way (``optuna_integration/sklearn/sklearn.py``, ``_Objective._partial_fit_and_score``
per fold, then ``trial.report(mean of the fold scores, step)`` and ``should_prune`` after every step). Here each fold is a
plain :func:`trainforge.run.api.train` run in its own thread; a :class:`LockstepPruning` callback makes the folds meet
after every epoch at a :class:`FoldGate`. The last fold to arrive reports the mean over the K folds of the monitored
value at each fold's best epoch so far (a fold that stopped early keeps its final value) and asks the pruner; every
fold then continues or raises ``optuna.TrialPruned`` (a pruned trial stops every fold).

Cost: the K models, their optimizer state and their K training splits live at once (about
:func:`lockstep_bytes`); above ``max_bytes`` :func:`fit_folds` falls back to fold by fold, reporting the cumulative
mean after each finished fold (step = fold index), and says which mode ran. Threads share the global torch RNG:
model initialisation is serialized (each fold's weights are what a lone run would draw), dropout draws are not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from trainforge.contracts import Callback

log = logging.getLogger(__name__)

#: above this estimate (bytes) of K models + optimizer state + K training splits, folds run one after another
LOCKSTEP_MAX_BYTES = 2 << 30


class FoldAborted(RuntimeError):
    """Another fold of the same trial failed: this one stops too."""


class FoldGate:
    """Where ``k`` fold threads meet after every epoch; ``report(epoch, mean) -> prune?`` decides for all."""

    def __init__(self, k: int, report: Callable[[int, float], bool]) -> None:
        self.k, self.report = k, report
        self.cond = threading.Condition()
        self.values: dict[int, dict[int, float]] = {}  # epoch -> fold -> value
        self.final: dict[int, float] = {}  # folds that stopped: their last value
        self.decided: dict[int, bool] = {}
        self.failed: BaseException | None = None
        self.start = threading.Lock()  # serializes each fold's seeding and model initialisation

    def arrive(self, fold: int, epoch: int, value: float) -> bool:
        """Post ``fold``'s value after ``epoch``; block until every running fold posted it; True = prune."""
        with self.cond:
            self.values.setdefault(epoch, {})[fold] = value
            self._decide(epoch)
            while epoch not in self.decided and self.failed is None:
                self.cond.wait()
            if self.failed is not None:
                raise FoldAborted(f"fold {fold} stopped: another fold failed ({self.failed})")
            return self.decided[epoch]

    def leave(self, fold: int, value: float | None, error: BaseException | None = None) -> None:
        """``fold`` ends (finished, stopped early, pruned or failed); the others no longer wait for it."""
        with self.cond:
            if value is not None:
                self.final[fold] = value
            else:
                self.final.setdefault(fold, float("nan"))
            if error is not None and self.failed is None:
                self.failed = error
            for epoch in list(self.values):
                self._decide(epoch)
            self.cond.notify_all()

    def _decide(self, epoch: int) -> None:
        posted = self.values[epoch]
        if epoch in self.decided or len(posted) + len(set(self.final) - set(posted)) < self.k:
            return
        scores = [posted.get(f, self.final.get(f)) for f in range(self.k)]
        mean = sum(scores) / self.k
        try:
            self.decided[epoch] = bool(self.report(epoch, mean))
        except BaseException as exc:  # noqa: BLE001 - the folds stop, the caller sees it
            self.failed = exc
        self.cond.notify_all()


class LockstepPruning(Callback):
    """One fold's side of the gate: after each epoch, the monitored ``metric`` at the best epoch so far."""

    def __init__(self, gate: FoldGate, fold: int, metric: str) -> None:
        self.gate, self.fold, self.metric = gate, fold, metric
        self.value: float | None = None
        self.epoch = 0
        self.started = False

    def on_fit_start(self, trainer: Any) -> None:
        if not self.started:
            self.started = True
            self.gate.start.release()  # the model is built: the next fold may seed and build its own

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        import optuna

        best = trainer.history[trainer.best_epoch - 1] if trainer.best_epoch else metrics
        self.value, self.epoch = float(best.get(self.metric, metrics[self.metric])), epoch
        if self.gate.arrive(self.fold, epoch, self.value):
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: the mean {self.metric} over folds")

    def on_fit_end(self, trainer: Any) -> None:
        self.gate.leave(self.fold, self.value)

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        import optuna

        error = None if isinstance(exc, (optuna.TrialPruned, FoldAborted)) else exc
        self.gate.leave(self.fold, self.value, error)


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
    ``"lockstep"`` (threads, step = epoch) unless :func:`lockstep_bytes` exceeds ``max_bytes``, then
    ``"sequential"`` (step = fold index, the cumulative mean). Raises ``optuna.TrialPruned`` when pruned and
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
    gate = FoldGate(len(bundles), report)
    results: list[Any] = [None] * len(bundles)
    errors: list[BaseException | None] = [None] * len(bundles)

    def work(i: int) -> None:
        cb = LockstepPruning(gate, i, metric)
        gate.start.acquire()
        try:
            results[i] = train_fold(i, bundles[i], [cb])
        except BaseException as exc:  # noqa: BLE001 - collected for the calling thread
            errors[i] = exc
            gate.leave(i, cb.value, None if isinstance(exc, (optuna.TrialPruned, FoldAborted)) else exc)
        finally:
            if not cb.started:
                cb.started = True
                gate.start.release()  # it failed before its fit started

    threads = [threading.Thread(target=work, args=(i,), name=f"fold-{i}", daemon=True) for i in range(len(bundles))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # short waits: Ctrl-C reaches this (the main) thread
    except BaseException as exc:
        gate.leave(-1, None, exc)
        for t in threads:
            t.join()
        raise
    if gate.failed is not None and not isinstance(gate.failed, (optuna.TrialPruned, FoldAborted)):
        raise gate.failed
    real = [e for e in errors if e is not None and not isinstance(e, (optuna.TrialPruned, FoldAborted))]
    if real:
        raise real[0]
    pruned = [e for e in errors if isinstance(e, optuna.TrialPruned)]
    if pruned:
        raise pruned[0]
    return results, "lockstep"
