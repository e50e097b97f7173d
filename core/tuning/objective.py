"""One Optuna trial = one fit (by default one nested MLflow run of :func:`trainforge.run.api.train`), pruned
through a callback.

The objective samples the search space, fits with the pruning callback always attached (so a pruner can
never be configured without something reporting to it), and returns the best validation value of the
monitored metric over the epochs (the epoch whose weights the checkpoint keeps).

The fit is a seam: :class:`Objective` calls its ``fitter`` (built by :func:`make_fitter`, one ``train``
call), so another way to score a config (k-fold cross-validation, a cheap trial on a subset) plugs in by
passing a different fitter; the run id comes back through ``on_start``, never from MLflow's global state.

What each trial leaves behind in Optuna: params, one intermediate value per epoch, state, and user attrs
``mlflow_run_id``, ``epochs_run``, ``best_epoch`` and, for failures, ``fail_reason``. Its MLflow child run:
see :mod:`trainforge.tuning.parent_run`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainforge import interrupts
from trainforge.contracts import Callback
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)


class OptunaPruning(Callback):
    """Report the monitored metric to the trial after every epoch and stop the fit if the pruner says so.

    The value reported at epoch ``t`` is ``metric`` at the best epoch so far of ``trainer.monitor``
    (the checkpoint kept if the fit stopped at ``t``): the objective the trial would return if it
    stopped at ``t``, so pruners compare like with like and a noisy epoch does not prune a trial that
    already did well. Raises ``optuna.TrialPruned`` from ``on_epoch_end``.
    """

    def __init__(self, trial: Any, metric: str, report: bool = True) -> None:
        self.trial = trial
        self.metric = metric
        self.report = report  # False in multi-objective studies: Optuna's trial.report is single-objective
        self.epoch = 0

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        import optuna

        self.epoch = epoch
        if not self.report:
            return
        best = trainer.history[trainer.best_epoch - 1] if trainer.best_epoch else metrics
        value = float(best.get(self.metric, metrics[self.metric]))
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.metric} {value:.4f} at the best epoch so far")


#: ``fit(cfg, *, trial, tags, callbacks, on_start) -> TrainResult``: score one resolved config; ``on_start`` is
#: called with the run id as soon as the fit's run is open; callbacks are trainer callbacks (pruning)
Fitter = Callable[..., Any]


def make_fitter(settings: dict[str, Any], bundle: Any, *, parent_run_id: str, experiment: str | None = None,
                experiment_id: str | None = None) -> Fitter:
    """The :data:`Fitter` of a study (``settings``: :meth:`TuneSettings.to_json`): one
    :func:`trainforge.run.api.train` call, a child run of the study's parent named ``STUDY-trial-N``, on
    ``bundle`` (the data, loaded once per worker process), no export. ``experiment_id``: the experiment the
    worker set up (:func:`trainforge.tracking.store.setup`, once per process; None: each trial sets it up).

    The one place that decides how a trial is scored and what its run writes: with ``settings["cv"]`` = K,
    :func:`trainforge.tuning.cv_trial.make_cv_fitter` (the K fold models in lockstep, the trial's value the CV
    mean; ``bundle`` is then only the plain split the study checked the models against); else the trial's
    :class:`~trainforge.run.options.RunOptions` and the ``trainer:`` keys of the study's base config
    (:data:`trainforge.tuning.settings.TRIAL_TRAINER`: no per-trial plots or ``last.pt`` unless asked)."""
    from trainforge.run.options import RunOptions

    study_name = settings["study"]
    if settings.get("cv"):
        from trainforge.tuning.cv_trial import make_cv_fitter

        cv_fit = make_cv_fitter(settings, parent_run_id=parent_run_id, experiment=experiment)

        def fit_cv(cfg: dict[str, Any], *, trial: Any, tags: dict[str, str], callbacks: list[Any],
                   on_start: Callable[[str], None]) -> Any:
            pruning = next((c for c in callbacks if isinstance(c, OptunaPruning)), None)
            return cv_fit(cfg, trial=trial, tags=tags, callbacks=[c for c in callbacks if c is not pruning],
                          pruning=pruning, on_start=on_start)

        return fit_cv
    common = RunOptions(tracking_uri=settings.get("tracking_uri"), experiment=experiment, parent_run_id=parent_run_id,
                        export=False, quiet=True, experiment_id=experiment_id)

    def fit(cfg: dict[str, Any], *, trial: Any, tags: dict[str, str], callbacks: list[Any],
            on_start: Callable[[str], None]) -> Any:
        import dataclasses

        from trainforge.run import api
        from trainforge.run.options import check_optimization

        check_optimization(cfg)  # cfg is resolved (Objective): RunOptions.resolve would resolve it again
        opts = dataclasses.replace(common, config=cfg, run_name=f"{study_name}-trial-{trial.number}", tags=tags)
        return api.train(options=opts, callbacks=callbacks, data=bundle, on_start=on_start,
                         extras={"optuna_trial": trial})

    return fit


def best_metrics(result: Any) -> dict[str, float]:
    """The metrics a trial is judged on: a fitter result's ``best_metrics`` when it has them (a cross-validated
    trial: the means over folds), else its history row at ``best_epoch`` (``{}`` without one)."""
    given = getattr(result, "best_metrics", None)
    if given is not None:
        return dict(given)
    return result.history[result.best_epoch - 1] if result.best_epoch and result.history else {}


@dataclass
class Objective:
    """``Objective(...)(trial) -> float`` (a list for a multi-objective study): the best validation value of
    ``metric`` for one sampled config.

    - ``space``: a :class:`~trainforge.tuning.space.SearchSpace`; ``base``: the config tree sampled values overlay.
    - ``fitter``: how a config is scored (:func:`make_fitter`); ``bundle``: the data, for measuring.
    - ``deploy``: a :class:`~trainforge.tuning.deployment.Deployment`: export, time and return its objective values.
    Raises ``optuna.TrialPruned`` when pruned and re-raises any training error (Optuna records FAIL).
    """

    space: Any
    base: dict[str, Any]
    metric: str
    study_name: str
    fitter: Fitter
    bundle: Any = None
    extra_tags: dict[str, str] = field(default_factory=dict)
    deploy: Any = None

    def __call__(self, trial: Any) -> float | list[float]:
        import optuna

        from trainforge import config as config_mod
        from trainforge.tuning.parent_run import finish_child
        from trainforge.tuning.space import merge_sample

        pruning = OptunaPruning(trial, self.metric, report=self.deploy is None or self.deploy.prunable(self.metric))
        tags = {tag.COMMAND: "tune", tag.STUDY: self.study_name, tag.TRIAL: f"{self.study_name}#{trial.number}",
                tag.TRIAL_NUMBER: str(trial.number), **self.extra_tags}
        run: list[str | None] = [None]

        def on_start(run_id: str) -> None:
            run[0] = run_id
            trial.set_user_attr("mlflow_run_id", run_id)  # linked even if the process dies

        try:
            sampled = self.space.sample(trial)
            quantize = sampled.pop("export", {}).get("quantize", "none")
            cfg = config_mod.resolve(merge_sample(self.base, sampled))
            result = self.fitter(cfg, trial=trial, tags=tags, callbacks=[pruning], on_start=on_start)
        except optuna.TrialPruned:
            trial.set_user_attr("epochs_run", pruning.epoch)
            finish_child(run[0], "PRUNED", trial, epoch=pruning.epoch)
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised for Optuna
            reason = interrupts.describe(exc) if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason[:2000])
            trial.set_user_attr("epochs_run", pruning.epoch)
            finish_child(run[0], "FAIL", trial, reason=reason)
            raise
        best = best_metrics(result)
        value = float(best.get(self.metric, math.nan))
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        if "val_loss" in best:  # breaks ties on the metric between trials
            trial.set_user_attr("val_loss", float(best["val_loss"]))
        if not math.isfinite(value):
            finish_child(result.run_id, "FAIL", trial, reason=f"{self.metric} is {value}")
            trial.set_user_attr("fail_reason", f"{self.metric} is {value}")
            raise ValueError(f"trial {trial.number}: {self.metric} is {value}")
        if self.deploy is not None:
            values = self._measure(trial, result, best, quantize)
            finish_child(result.run_id, "COMPLETE", trial)
            return values if self.deploy.multi else values[0]
        finish_child(result.run_id, "COMPLETE", trial, metrics={"objective": value})
        return value

    def _measure(self, trial: Any, result: Any, best: dict[str, float], quantize: str) -> list[float]:
        """The deployment objectives (:meth:`trainforge.tuning.deployment.Deployment.measure`); a failure (export
        gate, quantizer, provider) makes the trial FAIL with the reason and its run FAILED."""
        from trainforge.tuning.parent_run import end_run, finish_child

        try:
            return self.deploy.measure(trial, result, best, self.bundle, quantize)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason[:2000])
            finish_child(result.run_id, "FAIL", trial, reason=reason)
            end_run(result.run_id, "FAILED")
            raise
