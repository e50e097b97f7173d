"""One Optuna trial = one nested MLflow run of :func:`trainforge.run.api.train`, pruned through a callback.

The objective samples the search space, trains with the pruning callback always attached (so a pruner
can never be configured without something reporting to it), and returns the best validation value of
the monitored metric over the epochs (the epoch whose weights the checkpoint keeps).

What each trial leaves behind:

- Optuna: params, one intermediate value per epoch, state, and user attrs ``mlflow_run_id``,
  ``epochs_run``, ``best_epoch`` and, for failures, ``fail_reason``.
- MLflow (child run of the study's parent): every resolved hyperparameter, the Optuna params as
  ``optuna.<name>``, per-epoch metrics, the checkpoint, and the tag ``trainforge.trial_state``
  (``COMPLETE``, ``PRUNED`` or ``FAIL``). Pruned runs end FINISHED with ``trainforge.pruned_epoch``, the
  run name prefix ``pruned-`` (:data:`PRUNED_PREFIX`, visible in the runs table) and a description;
  failed ones FAILED with ``trainforge.error``; interrupted ones (Ctrl-C) KILLED.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from trainforge import interrupts
from trainforge.contracts import Callback
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

STATE_TAG = tag.TRIAL_STATE
TRIAL_TAG = tag.TRIAL
#: put before a pruned trial's run name, so the runs table tells it from a complete one (both FINISHED);
#: a prefix, because the UI's run-name column cuts long names at the end
PRUNED_PREFIX = "pruned-"


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
        self.run_id: str | None = None
        self.epoch = 0

    def on_fit_start(self, trainer: Any) -> None:
        import mlflow

        run = mlflow.active_run()  # train() runs the fit inside its (nested) child run
        if run is not None:
            self.run_id = run.info.run_id
            self.trial.set_user_attr("mlflow_run_id", self.run_id)  # linked even if the process dies

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


@dataclass
class Objective:
    """``Objective(...)(trial) -> float``: the best validation value of ``metric`` for one sampled config.

    - ``space``: a :class:`~trainforge.tuning.search.SearchSpace`; ``base``: the config tree sampled values overlay.
    - ``bundle``: the data, loaded once per worker process; ``parent_run_id``: the study's MLflow run.
    Raises ``optuna.TrialPruned`` when pruned and re-raises any training error (Optuna records FAIL).
    """

    space: Any
    base: dict[str, Any]
    metric: str
    study_name: str
    parent_run_id: str
    bundle: Any
    tracking_uri: str | None = None
    experiment: str | None = None
    quiet: bool = True
    extra_tags: dict[str, str] = field(default_factory=dict)
    #: a :class:`~trainforge.tuning.objectives.Deployment`: export, time and return its objective values
    deploy: Any = None

    def __call__(self, trial: Any) -> float | list[float]:
        import mlflow
        import optuna

        from trainforge import config as config_mod
        from trainforge.run import api
        from trainforge.tuning.search import merge_sample

        pruning = OptunaPruning(trial, self.metric, report=self.deploy is None or self.deploy.prunable(self.metric))
        tags = {tag.COMMAND: "tune", tag.STUDY: self.study_name,
                TRIAL_TAG: f"{self.study_name}#{trial.number}", tag.TRIAL_NUMBER: str(trial.number),
                **self.extra_tags}
        try:
            sampled = self.space.sample(trial)
            quantize = sampled.pop("export", {}).get("quantize", "none")
            cfg = config_mod.resolve(merge_sample(self.base, sampled))
            result = api.train(cfg, tracking_uri=self.tracking_uri, experiment=self.experiment,
                               run_name=f"{self.study_name}-trial-{trial.number}", parent_run_id=self.parent_run_id,
                               tags=tags, export=False, quiet=self.quiet, callbacks=[pruning], data=self.bundle,
                               extras={"optuna_trial": trial})
        except optuna.TrialPruned:
            trial.set_user_attr("epochs_run", pruning.epoch)
            finish_child(pruning.run_id or self._last_run(trial), "PRUNED", trial, epoch=pruning.epoch)
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised for Optuna
            reason = interrupts.describe(exc) if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason[:2000])
            trial.set_user_attr("epochs_run", pruning.epoch)
            finish_child(pruning.run_id or self._last_run(trial), "FAIL", trial, reason=reason)
            raise
        best = result.history[result.best_epoch - 1] if result.best_epoch else {}
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
        finish_child(result.run_id, "COMPLETE", trial)
        mlflow.log_metric("objective", value, run_id=result.run_id)
        return value

    def _measure(self, trial: Any, result: Any, best: dict[str, float], quantize: str) -> list[float]:
        """The deployment objectives (:meth:`trainforge.tuning.objectives.Deployment.measure`); a failure (export
        gate, quantizer, provider) makes the trial FAIL with the reason and its run FAILED."""
        try:
            return self.deploy.measure(trial, result, best, self.bundle, quantize)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason[:2000])
            finish_child(result.run_id, "FAIL", trial, reason=reason)
            from mlflow.tracking import MlflowClient

            MlflowClient().set_terminated(result.run_id, status="FAILED")
            raise

    def _last_run(self, trial: Any) -> str | None:
        """The child run train() opened for ``trial`` (None when it failed before opening one)."""
        import mlflow

        run = mlflow.last_active_run()
        if run is not None and run.data.tags.get(TRIAL_TAG) == f"{self.study_name}#{trial.number}":
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            return run.info.run_id
        return None


def finish_child(run_id: str | None, state: str, trial: Any, *, epoch: int = 0, reason: str | None = None) -> None:
    """Tag a trial's child run with its final Optuna state and log the trial's params on it.

    A pruned run was ended FAILED by ``tracking.run_status`` (TrialPruned is an exception to train());
    it is set back to FINISHED: pruning is a decision, not an error.
    """
    if run_id is None:
        return
    from mlflow.tracking import MlflowClient

    from trainforge.tracking.store import deferred_interrupt

    client = MlflowClient()
    try:
        with deferred_interrupt():
            client.set_tag(run_id, STATE_TAG, state)
            if trial.params:
                from mlflow.entities import Param

                client.log_batch(run_id, params=[Param(f"optuna.{k}", str(v)[:6000]) for k, v in trial.params.items()])
            if state == "PRUNED":
                client.set_tag(run_id, tag.PRUNED_EPOCH, str(epoch))
                client.delete_tag(run_id, tag.ERROR)
                client.set_terminated(run_id, status="FINISHED")
                mark_pruned(client, run_id, epoch)
            elif reason:
                client.set_tag(run_id, tag.FAIL_REASON, reason[:5000])
            if state == "FAIL" and client.get_run(run_id).info.status == "RUNNING":  # e.g. Ctrl-C between epochs
                client.set_terminated(run_id, status="KILLED" if reason in interrupts.REASONS else "FAILED")
    except Exception:  # bookkeeping must not hide the trial's own outcome
        log.exception("could not record state %s on MLflow run %s", state, run_id)


def mark_pruned(client: Any, run_id: str, epoch: int) -> None:
    """Rename a pruned trial's run ``pruned-<name>`` and describe it (``mlflow.note.content``, the run's
    description in the UI): pruned and complete runs are both FINISHED, the name tells them apart."""
    name = client.get_run(run_id).info.run_name or ""
    if not name.startswith(PRUNED_PREFIX):
        client.update_run(run_id, name=PRUNED_PREFIX + name)
    client.set_tag(run_id, "mlflow.note.content", f"Pruned by the study's pruner after epoch {epoch}.")
