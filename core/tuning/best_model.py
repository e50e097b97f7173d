"""The study's best model: refit on train+val, export through the ONNX gate into the parent run, register.

What lands in the parent run: ``onnx/model.onnx``, the MLflow models ``study-best`` (pyfunc, registered)
and ``study-best-onnx`` (:mod:`trainforge.exporting.logged`), and the exported file's ``test_*`` metrics
scored in onnxruntime. :func:`export_study_trial` re-exports any complete trial (``trainforge export --study``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainforge.errors import TrainforgeError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

#: the MLflow model name of a study's exported best model (in the parent run)
BEST_MODEL_NAME = "study-best"


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


def start_export(source_run_id: str, parent_run_id: str, *, register: str | None, bundle: Any = None,
                 tags: dict[str, str] | None = None, quantize: str = "none", threads: int | None = None,
                 exporter: Any = None) -> PendingExport:
    """Begin exporting the best model: rebuild it from ``source_run_id``'s best checkpoint and hand the job
    to ``exporter`` (:mod:`trainforge.exporting.jobs`; a forked exporter starts at once, so the caller can
    log the study's summary meanwhile; None: in this process, when finished). :meth:`PendingExport.finish`
    does the rest.

    Raises TrainforgeError when the checkpoint is missing.
    """
    from trainforge.contracts import TrainResult
    from trainforge.exporting.jobs import InProcessExporter
    from trainforge.exporting.logged import export_job
    from trainforge.tracking import checkpoints
    from trainforge.tracking import store as tracking
    from trainforge.tracking.runconfig import run_config
    from trainforge.training import data as data_mod
    from trainforge.training.checkpoint import load, rebuild

    kind = tracking.get_run(source_run_id).data.tags.get(tag.FIT)
    model = task = meta = path = None
    if kind:  # not the epoch loop's torch module (a scikit-learn estimator): no best.pt, its kind re-exports it
        cfg, checkpoint = run_config(source_run_id), {"epoch": 1}
    else:
        path = checkpoints.local_path(source_run_id)
        checkpoint = load(path)
        model, task, meta, cfg = rebuild(checkpoint)
    bundle = bundle if bundle is not None else data_mod.load(cfg["dataset"], cfg["trainer"],
                                                             task=None if kind else meta.task)
    if not kind:
        meta.table = getattr(bundle.meta, "table", None)  # a raw table's preprocessing goes in front of the graph
    pending = PendingExport(source_run_id, parent_run_id, register, tags or {}, quantize, threads, kind, bundle,
                            TrainResult(parent_run_id, None, {}, int(checkpoint["epoch"]), 0, 0.0, cfg),
                            (model, task, meta), exporter or InProcessExporter())
    if not kind:
        pending.exporter.submit(export_job(model, task, meta, bundle, pending.folder, parent_run_id, cfg, path))
    return pending


@dataclass
class PendingExport:
    """A best model being exported (:func:`start_export`); :meth:`finish` once, then it is closed."""

    source_run_id: str
    parent_run_id: str
    register: str | None
    tags: dict[str, str]
    quantize: str
    threads: int | None
    kind: str | None
    bundle: Any
    result: Any
    network: tuple[Any, Any, Any]
    exporter: Any
    _tmp: Any = field(default_factory=lambda: tempfile.TemporaryDirectory(prefix="trainforge-best-"))

    @property
    def folder(self) -> Path:
        return Path(self._tmp.name)

    def close(self) -> None:
        """End a forked exporter and remove the working folder (idempotent)."""
        self.exporter.close()
        self._tmp.cleanup()

    def finish(self) -> BestModel:
        """Log the verified file into the parent run (``onnx/model.onnx`` + MLflow models ``study-best``,
        ``study-best-onnx``; re-quantized first with ``quantize="int8"``), score it on the test split with
        onnxruntime (``threads`` intra-op threads), and register a new version of ``register`` (skipped
        when None). Raises :class:`ExportError` when the export fails its gate."""
        import mlflow

        from trainforge.exporting.latency import evaluate_onnx, raw_feeds
        from trainforge.exporting.logged import export_and_log, log_onnx
        from trainforge.kinds import get_kind
        from trainforge.training import data as data_mod
        from trainforge.training.tasks import get_task

        result, bundle, (model, task, meta) = self.result, self.bundle, self.network
        try:
            # export_and_log logs the MLflow model into the active run: the parent's; the caller sets its final status.
            try:
                opened = mlflow.start_run(run_id=self.parent_run_id)
            except Exception as exc:  # another run is active in this process (a Python caller's)
                raise TrainforgeError(f"cannot log the best model into the study's run {self.parent_run_id}: "
                                      f"{exc}") from None
            with opened:
                if self.kind:
                    report = get_kind(self.kind).export_run(self.source_run_id, self.folder / "model.onnx")
                    log_onnx(result, report, data_mod.sample_rows(bundle.test), name=BEST_MODEL_NAME)
                    task = get_task(bundle.meta.task, meta=bundle.meta)
                else:
                    export_and_log(result, model, task, meta, bundle, self.folder, quantize=self.quantize,
                                   name=BEST_MODEL_NAME, exporter=self.exporter)
        finally:
            self.close()
        best = BestModel(self.source_run_id, result.onnx_path, result.model_uri)
        best.test_metrics = {f"test_{k}": v for k, v in
                             evaluate_onnx(result.onnx_path, bundle.test, task, threads=self.threads,
                                           feeds=raw_feeds(bundle, "test")).items()}
        mlflow.log_metrics(best.test_metrics, run_id=self.parent_run_id)
        if self.register:
            version = mlflow.register_model(result.model_uri, self.register, tags={
                tag.SOURCE_RUN_ID: self.source_run_id, tag.PARENT_RUN_ID: self.parent_run_id, **self.tags})
            best.model_version = str(version.version)
            client = mlflow.tracking.MlflowClient()
            client.update_model_version(self.register, version.version, description=version_description(
                client, self.source_run_id, self.parent_run_id, self.tags.get(tag.TRIAL)))
            tag.set_tags(self.parent_run_id, {tag.MODEL_VERSION: f"{self.register}/{version.version}"}, client)
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


def export_study_trial(study: str, trial: int | None = None, output: str | Path | None = None, *,
                       storage: str | None = None, tracking_uri: str | None = None, opset: int | None = None,
                       log_to_run: bool = False, quantize: str | None = None) -> tuple[Any, Any]:
    """Export trial ``trial`` of ``study`` (None: the study's choice, see :func:`trial_of`) through the ONNX gate.

    ``output`` defaults to ``./STUDY.onnx`` (``./STUDY-trial-N.onnx`` with a trial). An int8 trial (its
    ``export.quantize``), or ``quantize="int8"``, also writes ``OUTPUT.int8.onnx``. ``log_to_run`` logs the
    fp32 file to the study's parent run as ``onnx/model.onnx``. Returns ``(ExportReport, QuantizeReport or
    None)``; raises TrainforgeError as :func:`trial_of`.
    """
    from trainforge.exporting.exporter import export
    from trainforge.tuning import study as study_mod
    from trainforge.tuning.parent_run import PARENT_ATTR
    from trainforge.tuning.selection import trial_of

    the_study, _ = study_mod.open_study(study_mod.open_storage(storage), study, None)
    chosen = trial_of(the_study, trial)
    run_id = chosen.user_attrs["mlflow_run_id"]
    report = export(run_id, output or (f"{study}.onnx" if trial is None else f"{study}-trial-{trial}.onnx"),
                    tracking_uri=tracking_uri, opset=opset)
    parent = the_study.user_attrs.get(PARENT_ATTR)
    if log_to_run and parent:
        import mlflow

        mlflow.log_artifact(str(report.path), artifact_path="onnx", run_id=parent)
    quantized = None
    if quantize == "int8" or chosen.user_attrs.get("quantize") == "int8":
        from trainforge.exporting.quantize import quantize_run

        quantized = quantize_run(run_id, report.path, tracking_uri=tracking_uri)
    log.info("study %s trial %d exported (%s)", study, chosen.number, json.dumps(str(report.path)))
    return report, quantized
