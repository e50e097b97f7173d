"""What a study writes to its MLflow parent run, and the best model: refit, export, registration.

Parent run content:

- params (once, when the study is created; MLflow params are immutable): ``study``, ``dataset``,
  ``models``, ``optimizers``, ``metric``, ``direction`` and one ``space.<name>`` per search parameter;
- tags (updated by every worker and resume): ``trainforge.sampler``, ``trainforge.pruner``,
  ``trainforge.best.<param>``, ``trainforge.best_trial``, ``trainforge.best_run_id``;
- metrics: ``best_value``, ``n_complete``, ``n_pruned``, ``n_fail`` (step 0, rewritten by every summary) and
  the exported model's ``test_*`` metrics;
- artifacts: ``search_space.json``, ``best_params.json``, ``trials.csv`` (:func:`trials_frame`),
  ``plots/*.png`` (``optuna.visualization.matplotlib``), ``onnx/model.onnx`` and the MLflow models
  ``study-best`` (pyfunc, registered) and ``study-best-onnx`` (:mod:`trainforge.exporting.logged`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainforge.errors import TrainforgeError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

#: the MLflow model name of a study's exported best model (in the parent run)
BEST_MODEL_NAME = "study-best"
PLOTS = {  # file name -> (optuna.visualization.matplotlib function, minimum complete trials)
    "optimization_history": ("plot_optimization_history", 1),
    "param_importances": ("plot_param_importances", 2),
    "parallel_coordinate": ("plot_parallel_coordinate", 1),
    "intermediate_values": ("plot_intermediate_values", 1),
}


def _short(dist: dict[str, Any]) -> str:
    if dist["type"] == "categorical":
        text = f"categorical{dist['choices']}"
    else:
        text = f"{dist['type']}[{dist['low']}, {dist['high']}]" + (" log" if dist["log"] else "")
    return text + (f" if {dist['condition']}" if dist.get("condition") else "")


def log_study_start(parent_run_id: str, created: bool, settings: dict[str, Any], space: dict[str, Any]) -> None:
    """Params on creation; sampler/pruner tags and the search-space artifact on every start."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if created:
        from mlflow.entities import Param

        params = {"study": settings["study"], "dataset": settings["base"]["dataset"]["name"],
                  "models": ",".join(settings["models"]), "optimizers": ",".join(settings["optimizers"]),
                  "metric": settings["metric"], "direction": settings["direction"],
                  **{f"space.{k}": _short(v) for k, v in space["params"].items()},
                  **{f"space.{k}": f"fixed {v!r}" for k, v in space["fixed"].items()}}
        client.log_batch(parent_run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    for key in ("sampler", "pruner", "storage"):
        client.set_tag(parent_run_id, tag.named(key), str(settings.get(key)))
    from trainforge.tracking.stale import process_tags

    for key, value in process_tags().items():  # the process running the study now (a resume: this one)
        client.set_tag(parent_run_id, key, value)
    client.update_run(parent_run_id, status="RUNNING")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "search_space.json"
        path.write_text(json.dumps(space, indent=1, default=str))
        client.log_artifact(parent_run_id, str(path))


def log_study_summary(study: Any, parent_run_id: str, fixed: dict[str, Any], *, plots: bool = True) -> None:
    """Best value/params, trial counts, the trials CSV and the plots, logged to the parent run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from trainforge.tuning.study import trial_counts

    client = MlflowClient()
    counts = trial_counts(study)
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
            client.set_tag(parent_run_id, tag.BEST_TRIAL, str(best.number))
            client.set_tag(parent_run_id, tag.BEST_RUN_ID, str(best.user_attrs.get("mlflow_run_id")))
            for key, value in best_params.items():
                client.set_tag(parent_run_id, tag.named("best", key), str(value)[:5000])
        # Step 0: a summary is one value per study, not a series over trials (a resume overwrites it; the
        # run's latest value is the one shown), so MLflow's charts show a value, not a dot at step N.
        now = int(time.time() * 1000)
        client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        trials_frame(study).to_csv(folder / "trials.csv", index=False)
        client.log_artifact(parent_run_id, str(folder / "trials.csv"))
        if plots:
            plot_dir = folder / "plots"
            plot_dir.mkdir()
            if write_plots(study, plot_dir):
                client.log_artifacts(parent_run_id, str(plot_dir), artifact_path="plots")


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


def write_plots(study: Any, folder: Path) -> list[str]:
    """Write the PNG plots of :data:`PLOTS` that the study has enough trials for; returns the names written.

    A plot Optuna cannot draw (e.g. importances with a single parameter) is skipped with a log line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    written = []
    for name, (function, minimum) in PLOTS.items():
        if n_complete < minimum:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ovm, function)(study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.set_size_inches(9, 6)
            figure.tight_layout()
            figure.savefig(folder / f"{name}.png", dpi=90)
            written.append(name)
        except Exception as exc:  # noqa: BLE001 - a missing plot must not fail the study
            log.info("plot %s skipped: %s", name, exc)
        finally:
            plt.close("all")
    return written


def best_trial(study: Any) -> Any:
    """The best COMPLETE trial, or None when there is none yet.

    Ties on the objective are common with accuracies on a small validation split (180 rows on digits:
    one row is 0.56 points); among the tied trials the one with the lowest validation loss at its best
    epoch (user attr ``val_loss``) wins, then the earliest. A multi-objective study has no single best:
    None (see :mod:`trainforge.tuning.pareto`).
    """
    import math

    import optuna

    if len(study.directions) > 1:
        return None
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    if not complete:
        return None
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    top = max(sign * t.value for t in complete)
    tied = [t for t in complete if sign * t.value >= top - 1e-12]
    return min(tied, key=lambda t: (t.user_attrs.get("val_loss", math.inf), t.number))


@dataclass
class BestModel:
    """The exported best model: the run whose checkpoint it is, the ONNX file, the registry version."""

    source_run_id: str
    onnx_path: str | None = None
    model_uri: str | None = None
    model_version: str | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)


def refit(best: Any, parent_run_id: str, bundle: Any, *, study_name: str, tracking_uri: str | None,
          experiment: str | None) -> str:
    """Retrain the best trial's config on train+val for its best epoch count; returns the refit run id.

    With no held-out data left, the checkpoint kept is the epoch with the lowest training loss
    (``monitor=train_loss``, no early stopping). The validation metrics of this run are not held out;
    its ``data.train_size`` param counts train+val. Standardization keeps the training split's statistics.
    """
    import torch
    import yaml

    from trainforge.run import api
    from trainforge.tracking import store as tracking
    from trainforge.training.data import DataBundle, TensorSplit

    if not isinstance(bundle.train, TensorSplit) or not isinstance(bundle.val, TensorSplit):
        raise TrainforgeError("--refit needs in-memory train and validation splits")
    with open(tracking.download(best.user_attrs["mlflow_run_id"], "config.yaml")) as fh:
        cfg = yaml.safe_load(fh)
    epochs = max(1, int(best.user_attrs.get("best_epoch") or cfg["trainer"]["epochs"]))
    cfg["trainer"].update(epochs=epochs, patience=0, monitor="train_loss", mode="min")
    sizes = {**bundle.meta.sizes, "train": len(bundle.train) + len(bundle.val)}
    merged = DataBundle(TensorSplit(torch.cat([bundle.train.x, bundle.val.x]), torch.cat([bundle.train.y, bundle.val.y])),
                        bundle.val, bundle.test, dataclasses.replace(bundle.meta, sizes=sizes))
    result = api.train(cfg, tracking_uri=tracking_uri, experiment=experiment, run_name=f"{study_name}-refit",
                       parent_run_id=parent_run_id, export=False, quiet=True, data=merged,
                       tags={tag.COMMAND: "tune", tag.ROLE: "refit", tag.STUDY: study_name,
                             tag.REFIT_OF_TRIAL: str(best.number)})
    return result.run_id


def export_best(source_run_id: str, parent_run_id: str, *, register: str | None, bundle: Any = None,
                tags: dict[str, str] | None = None, quantize: str = "none") -> BestModel:
    """Rebuild the model from ``source_run_id``'s best checkpoint, export it through the verified ONNX gate
    into the parent run (``onnx/model.onnx`` + MLflow models ``study-best``, ``study-best-onnx``; re-quantized
    first with ``quantize="int8"``), score it on the test split with onnxruntime, and register a new version
    of ``register`` (skipped when None).

    Raises :class:`ExportError` when the export fails its gate, TrainforgeError when the checkpoint is missing.
    """
    import mlflow

    from trainforge.contracts import TrainResult
    from trainforge.exporting.logged import export_and_log
    from trainforge.tracking import checkpoints
    from trainforge.training import data as data_mod
    from trainforge.training.checkpoint import rebuild

    checkpoint = checkpoints.fetch(source_run_id)
    model, task, meta, cfg = rebuild(checkpoint)
    bundle = bundle if bundle is not None else data_mod.load(cfg["dataset"], cfg["trainer"], task=meta.task)
    result = TrainResult(parent_run_id, None, {}, int(checkpoint["epoch"]), 0, 0.0, cfg)
    active = mlflow.active_run()
    if active is not None and active.info.run_id != parent_run_id:
        raise TrainforgeError(f"another MLflow run ({active.info.run_id}) is active; end it first")
    with tempfile.TemporaryDirectory(prefix="trainforge-best-") as tmp:
        # export_and_log logs the MLflow model into the active run; the caller sets the final status.
        with mlflow.start_run(run_id=parent_run_id) if active is None else contextlib.nullcontext():
            export_and_log(result, model, task, meta, bundle, Path(tmp), quantize=quantize, name=BEST_MODEL_NAME)
    best = BestModel(source_run_id, result.onnx_path, result.model_uri)
    best.test_metrics = {f"test_{k}": v for k, v in evaluate_onnx(result.onnx_path, bundle.test, task).items()}
    mlflow.log_metrics(best.test_metrics, run_id=parent_run_id)
    if register:
        version = mlflow.register_model(result.model_uri, register, tags={
            tag.SOURCE_RUN_ID: source_run_id, tag.PARENT_RUN_ID: parent_run_id, **(tags or {})})
        best.model_version = str(version.version)
        client = mlflow.tracking.MlflowClient()
        client.update_model_version(register, version.version, description=version_description(
            client, source_run_id, parent_run_id, (tags or {}).get(tag.TRIAL)))
        client.set_tag(parent_run_id, tag.MODEL_VERSION, f"{register}/{version.version}")
    return best


def version_description(client: Any, source_run_id: str, parent_run_id: str, trial: str | None) -> str:
    """A registered version's description (markdown, shown on its page): links to the run whose checkpoint
    it is (the trial, or the refit) and to the study's parent run, which holds the logged model."""
    def link(run_id: str) -> str:
        run = client.get_run(run_id)
        return f"[{run.info.run_name or run_id}](#/experiments/{run.info.experiment_id}/runs/{run_id})"

    source = f"trial {trial}" if trial is not None else "the best trial"
    return (f"Exported from {source}: checkpoint of run {link(source_run_id)}; "
            f"study parent run {link(parent_run_id)}.")


def evaluate_onnx(path: str, split: Any, task: Any, batch_size: int = 1024) -> dict[str, float]:
    """The task's metrics (``accuracy``, ``loss``, ... for classification) of an ONNX file on a split,
    computed with onnxruntime (CPU) on the raw features: what ``trainforge predict`` would score."""
    import torch

    from trainforge.exporting.sessions import open_session
    from trainforge.training.data import batches

    session, _ = open_session(path, "cpu")
    output = session.get_outputs()[0].name  # logits (classification) or prediction (regression)
    state = None
    for x, y in batches(split, batch_size):
        out = torch.from_numpy(session.run([output], {"input": x.cpu().numpy()})[0])
        if state is None:
            state = task.new_state(out.shape[1], torch.device("cpu"))
        task.update(state, out, y.cpu())
    return task.compute(state) if state is not None else {}
