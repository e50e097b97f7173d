"""Every MLflow write of a study: its parent run, the trials' child runs, the summary, the Pareto front.

Parent run content:

- params (once, when the study is created; MLflow params are immutable): ``study``, ``dataset``,
  ``models``, ``optimizers``, ``metric``, ``direction`` and one ``space.<name>`` per search parameter;
- tags (updated by every worker and resume): ``trainforge.sampler``, ``trainforge.pruner``,
  ``trainforge.best.<param>``, ``trainforge.best_trial``, ``trainforge.best_run_id``, and for a Pareto
  front ``trainforge.selected_trial`` and ``trainforge.selected.<objective>``;
- metrics: ``best_value``, ``n_complete``, ``n_pruned``, ``n_fail`` (step 0, rewritten by every summary) and
  the exported model's ``test_*`` metrics (:mod:`trainforge.tuning.best_model`);
- artifacts: ``search_space.json``, ``best_params.json``, ``trials.csv`` (:func:`trials_frame`),
  ``plots/*.png`` (:mod:`trainforge.tuning.plots`), ``pareto.csv``, ``onnx/model.onnx`` and the MLflow
  models ``study-best`` (pyfunc, registered) and ``study-best-onnx``.

The study is the parent run: its id is the study user attr :data:`PARENT_ATTR`. The process that *creates*
the study (an atomic step in every Optuna storage: a second creator gets ``DuplicatedStudyError``) creates
the parent run and stores its id; other processes wait for the attr. Should the creator die in between, a
late process creates a parent itself, sets the attr only if still absent and re-reads it; a loser deletes
its own run, so the study never ends with two parents.

A trial's child run (opened by ``train``) gets the tag ``trainforge.trial_state`` (``COMPLETE``,
``PRUNED`` or ``FAIL``) and the Optuna params as ``optuna.<name>``; pruned runs end FINISHED with
``trainforge.pruned_epoch``, the run name prefix ``pruned-`` (:data:`PRUNED_PREFIX`, visible in the
runs table) and a description; failed ones FAILED with ``trainforge.error``; interrupted ones KILLED.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from trainforge import interrupts
from trainforge.errors import TrainforgeError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
PARENT_WAIT_SECONDS = 60.0
STATE_TAG = tag.TRIAL_STATE
#: put before a pruned trial's run name, so the runs table tells it from a complete one (both FINISHED);
#: a prefix, because the UI's run-name column cuts long names at the end
PRUNED_PREFIX = "pruned-"


def setup_tracking(uri: str | None, experiment: str | None, attempts: int = 5) -> str:
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


def _short(dist: dict[str, Any]) -> str:
    if dist["type"] == "categorical":
        text = f"categorical{dist['choices']}"
    else:
        text = f"{dist['type']}[{dist['low']}, {dist['high']}]" + (" log" if dist["log"] else "")
    return text + (f" if {dist['condition']}" if dist.get("condition") else "")


def log_study_start(parent_run_id: str, created: bool, settings: Any, space: dict[str, Any]) -> None:
    """Params on creation; sampler/pruner tags and the search-space artifact on every start (``settings``: a
    :class:`~trainforge.tuning.settings.TuneSettings`, ``space``: :meth:`SearchSpace.describe`)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if created:
        from mlflow.entities import Param

        params = {"study": settings.study, "dataset": settings.dataset,
                  "models": ",".join(settings.models), "optimizers": ",".join(settings.optimizers),
                  "metric": settings.metric, "direction": settings.direction,
                  **{f"space.{k}": _short(v) for k, v in space["params"].items()},
                  **{f"space.{k}": f"fixed {v!r}" for k, v in space["fixed"].items()}}
        client.log_batch(parent_run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    from trainforge.tracking.stale import process_tags

    # one batch: every worker of the study writes these tags at start-up (process tags: the one running now)
    tag.set_tags(parent_run_id, {**{tag.named(k): str(getattr(settings, k)) for k in ("sampler", "pruner", "storage")},
                                 **process_tags()}, client)
    client.update_run(parent_run_id, status="RUNNING")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "search_space.json"
        path.write_text(json.dumps(space, indent=1, default=str))
        client.log_artifact(parent_run_id, str(path))


def log_study_summary(study: Any, parent_run_id: str, fixed: dict[str, Any], counts: dict[str, int], *,
                      plots: Any = None) -> None:
    """Best value/params, trial ``counts`` (:func:`trainforge.tuning.study.trial_counts`), the trials CSV and
    the ``plots`` (a :class:`~trainforge.plots.StudyPlots`, waited for; None: no plots), logged to the parent run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from trainforge.tuning.selection import best_trial

    client = MlflowClient()
    metrics = {k: float(counts[k]) for k in ("n_complete", "n_pruned", "n_fail")}
    best = best_trial(study)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if best is not None:
            metrics["best_value"] = float(best.value)
            best_params = {**fixed, **best.params}
            (folder / "best_params.json").write_text(json.dumps(
                {"trial": best.number, "value": best.value, "params": best_params,
                 "mlflow_run_id": best.user_attrs.get("mlflow_run_id")}, indent=1, default=str))
            client.log_artifact(parent_run_id, str(folder / "best_params.json"))
            tag.set_tags(parent_run_id, {tag.BEST_TRIAL: str(best.number),
                                         tag.BEST_RUN_ID: str(best.user_attrs.get("mlflow_run_id")),
                                         **{tag.named("best", k): str(v) for k, v in best_params.items()}}, client)
        # Step 0: a summary is one value per study, not a series over trials (a resume overwrites it; the
        # run's latest value is the one shown), so MLflow's charts show a value, not a dot at step N.
        now = int(time.time() * 1000)
        client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        trials_frame(study).to_csv(folder / "trials.csv", index=False)
        client.log_artifact(parent_run_id, str(folder / "trials.csv"))
    if plots is not None:
        for name in plots.wait():
            client.log_artifact(parent_run_id, str(plots.folder / f"{name}.png"), artifact_path="plots")


def trials_frame(study: Any) -> Any:
    """``study.trials_dataframe()`` reordered for reading: ``number``, ``state``, ``value``, the ``params_*``
    columns, then the rest; ``duration`` becomes ``duration_s`` (float seconds; NaN for unfinished trials)."""
    import pandas as pd

    frame = study.trials_dataframe()
    if "duration" in frame.columns:
        # all-None when no trial has finished (e.g. Ctrl-C at start-up): object dtype, so convert first
        frame["duration"] = pd.to_timedelta(frame["duration"]).dt.total_seconds()
        frame = frame.rename(columns={"duration": "duration_s"})
    first = [c for c in ("number", "state", "value") if c in frame.columns]
    first += [c for c in frame.columns if c.startswith("params_")]
    return frame[first + [c for c in frame.columns if c not in first]]


def log_front(study: Any, parent_run_id: str, names: list[str], chosen: Any, fixed: dict[str, Any]) -> None:
    """``pareto.csv``, ``plots/pareto_front.png`` and the selection tags on the parent run (module docstring)."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from trainforge.plots import plot_front
    from trainforge.tuning.selection import SELECTED_ATTR, front, values_of

    client = MlflowClient()
    points = front(study)
    rows = [{"trial": t.number, **values_of(t, names), "quantize": t.user_attrs.get("quantize", "none"),
             "run_id": t.user_attrs.get("mlflow_run_id"), "selected": chosen is not None and t.number == chosen.number,
             **{f"params.{k}": v for k, v in {**fixed, **t.params}.items()}} for t in points]
    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame(rows, columns=None if rows else ["trial", *names, "quantize", "run_id", "selected"]).to_csv(
            Path(tmp) / "pareto.csv", index=False)
        client.log_artifact(parent_run_id, str(Path(tmp) / "pareto.csv"))
        if points and len(names) in (2, 3):
            (Path(tmp) / "plots").mkdir()
            try:
                plot_front(study, points, names, chosen, Path(tmp) / "plots" / "pareto_front.png")
                client.log_artifact(parent_run_id, str(Path(tmp) / "plots" / "pareto_front.png"), artifact_path="plots")
            except Exception as exc:  # noqa: BLE001 - a missing plot must not fail the study
                log.info("plot pareto_front skipped: %s", exc)
    if chosen is not None:
        tag.set_tags(parent_run_id, {SELECTED_ATTR: str(chosen.number),
                                     **{tag.named("selected", n): f"{v:.6g}" for n, v in values_of(chosen, names).items()}},
                     client)
        study.set_user_attr(SELECTED_ATTR, chosen.number)


def finish_child(run_id: str | None, state: str, trial: Any, *, epoch: int = 0, reason: str | None = None,
                 metrics: dict[str, float] | None = None) -> None:
    """Tag a trial's child run with its final Optuna state and log the trial's params on it as ``optuna.<name>``
    (and ``metrics``, e.g. the ``objective``), in one ``log_batch``.

    A pruned run was ended FAILED by ``tracking.run_status`` (TrialPruned is an exception to train());
    it is set back to FINISHED: pruning is a decision, not an error.
    """
    if run_id is None:
        return
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from trainforge.tracking.store import deferred_interrupt

    client = MlflowClient()
    stamp = int(time.time() * 1000)
    try:
        with deferred_interrupt():
            client.log_batch(run_id, params=[Param(f"optuna.{k}", str(v)[:6000]) for k, v in trial.params.items()],
                             tags=[RunTag(STATE_TAG, state)],
                             metrics=[Metric(k, float(v), stamp, 0) for k, v in (metrics or {}).items()])
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


def log_measures(run_id: str, found: Any, values: dict[str, float], *, quantize: str, batch: int, threads: int) -> None:
    """A measured trial (:class:`~trainforge.exporting.latency.Measured`) on its child run: the logged
    metrics, ``objective_<name>`` for each objective value, and the tags ``trainforge.quantize``,
    ``latency_batch``, ``latency_threads``, ``provider``, ``latency_runs``."""
    import mlflow

    mlflow.log_metrics({**found.logged, **{f"objective_{k}": v for k, v in values.items()}}, run_id=run_id)
    mlflow.tracking.MlflowClient().log_batch(run_id, tags=[
        mlflow.entities.RunTag(tag.named(k), str(v)) for k, v in (
            ("quantize", quantize), ("latency_batch", batch), ("latency_threads", threads),
            ("provider", found.timing.provider), ("latency_runs", found.timing.runs))])


def end_run(run_id: str, status: str) -> None:
    """End run ``run_id`` (the parent or a child) ``FINISHED``, ``FAILED`` or ``KILLED``: MLflow leaves the status to its writer."""
    from mlflow.tracking import MlflowClient

    MlflowClient().set_terminated(run_id, status=status)


def experiment_name(run_id: str) -> str:
    """The name of the experiment that holds ``run_id`` (what worker processes set up)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name
