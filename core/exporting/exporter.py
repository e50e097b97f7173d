"""Export to ONNX as a gate: export, check, compare with torch, refuse on a parity breach, embed metadata.

The exported graph is :class:`~trainforge.training.modeling.InferenceModel`: raw float32 features
``(N, *input_shape)`` in (standardization is inside the graph), the task's outputs out (``logits`` and
``probabilities`` ``(N, K)`` for classification, ``prediction`` ``(N, T)`` for regression). The batch
axis is dynamic. The file is self-contained (``external_data=False``): no ``model.onnx.data`` sidecar.

``metadata_props`` (all strings; lists and dicts as JSON) carry what inference needs:
``trainforge.task``, ``trainforge.input_name``, ``trainforge.input_shape`` (with ``"batch"`` first),
``trainforge.input_dtype``, ``trainforge.outputs``, ``trainforge.class_names``,
``trainforge.feature_names``, ``trainforge.normalization`` (mean/std, already applied inside the graph),
``trainforge.version``, ``trainforge.mlflow_run_id``, ``trainforge.model``, ``trainforge.dataset``,
``trainforge.opset``, ``trainforge.parity_max_abs_diff`` (onnxruntime's CPU provider vs torch),
``trainforge.parity_cuda_max_abs_diff`` (its CUDA provider vs torch, ``null`` where CUDA cannot run) and
``trainforge.part`` (empty for the whole model, e.g. ``encoder`` for an autoencoder's encoder exported alone),
``trainforge.columns`` (a raw table's column schema with its training statistics; ``null`` otherwise) and
``trainforge.raw_parity`` (that table's raw-row gate figures).

A raw table's model (``trainforge.columns`` set) takes the raw columns instead of ``input``: one ``(N, 1)``
input per column, float32 with NaN or strings (:mod:`trainforge.exporting.tabular`).

A generator (a model with ``example_input``, e.g. the GAN) is exported from its input code: the graph
takes e.g. a latent ``(N, Z)`` float32 and returns ``samples`` ``(N, *input_shape)``.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.errors import ExportError
from trainforge.exporting.providers import CPU, CUDA, cuda_usable, session_providers
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

#: Largest absolute difference between torch and onnxruntime outputs that export accepts.
PARITY_TOLERANCE = 1e-4
INPUT_NAME = "input"
META_PREFIX = "trainforge."


@dataclass
class ExportReport:
    """Where the model went and how closely onnxruntime reproduces torch.

    ``max_abs_diff`` maps a batch size to the largest absolute output difference at that batch size on
    onnxruntime's CPU provider; ``cuda_max_abs_diff`` the same on its CUDA provider (empty where the CUDA
    provider cannot run, see :func:`trainforge.exporting.providers.cuda_usable`).
    """

    path: Path
    opset: int
    max_abs_diff: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    cuda_max_abs_diff: dict[int, float] = field(default_factory=dict)
    #: a raw table's gate (:func:`trainforge.exporting.tabular.raw_parity`): rows, max_abs_diff, argmax_agreement
    raw_parity: dict[str, float] = field(default_factory=dict)
    #: a raw table: a few held-out raw rows (pandas DataFrame), the served model's input example
    raw_example: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "opset": self.opset, "seconds": round(self.seconds, 3),
                "max_abs_diff": {str(k): v for k, v in self.max_abs_diff.items()},
                "cuda_max_abs_diff": {str(k): v for k, v in self.cuda_max_abs_diff.items()}}


def export_model(model: Any, task: Any, meta: Any, sample: np.ndarray, path: str | Path, **kwargs: Any) -> ExportReport:
    """Export ``model`` (a :class:`TrainforgeModel`) and verify it against torch.

    - ``sample``: real float32 rows ``(N, *input_shape)`` (e.g. the test split; for a generator its
      ``example_input``, see :func:`export_sample`) used for the parity check at batch sizes 1 and ``N``
      (``N`` capped at 256).
    - ``kwargs``: ``run_id``, ``config``, ``opset``, ``tolerance`` (default :data:`PARITY_TOLERANCE`) and
      ``part``: export only this part of the model (``model.export_parts()``, e.g. ``"encoder"``).
    - The parity check runs on onnxruntime's CPU provider and, where it can run, on its CUDA provider
      (with the options ``trainforge predict`` uses); both must stay within ``tolerance``.
    - Raises :class:`ExportError` when the exporter, ``onnx.checker`` or the parity check fails, or the
      part is unknown. The file is written under a temporary name and renamed once it passed the gate
      (:func:`trainforge.atomic.atomic_output`): on failure an existing ``path`` is left as it was.
    """
    from trainforge.atomic import atomic_output

    with atomic_output(path) as tmp:
        report = _export_model(model, task, meta, sample, tmp, **kwargs)
    report.path = Path(path)
    return report


def _export_model(
    model: Any,
    task: Any,
    meta: Any,
    sample: np.ndarray,
    path: Path,
    *,
    run_id: str | None = None,
    config: dict[str, Any] | None = None,
    opset: int | None = None,
    tolerance: float = PARITY_TOLERANCE,
    part: str | None = None,
) -> ExportReport:
    import onnx
    import torch

    from trainforge import __version__
    from trainforge.training.modeling import InferenceModel, PartModel

    started = time.perf_counter()
    model = model.to("cpu").eval()
    if part:
        parts = model.export_parts() if hasattr(model, "export_parts") else {}
        if part not in parts:
            raise ExportError(f"model has no part {part!r} to export; parts: {', '.join(sorted(parts)) or '(none)'}")
        module, output_name = parts[part]
        wrapped, outputs = PartModel(model, module).eval(), [output_name]
    else:
        wrapped, outputs = InferenceModel(model, task).eval(), list(task.onnx_outputs)
    sample = np.ascontiguousarray(sample[:256], dtype=np.float32)
    if len(sample) == 0:
        raise ExportError("cannot check the export: no sample rows")
    example = torch.from_numpy(np.repeat(sample[:1], 2, axis=0))  # batch 2 so the batch axis stays symbolic
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    quiet_loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet_loggers]
    for lg in quiet_loggers:
        lg.setLevel(logging.ERROR)  # the exporter's progress and torchvision notices are noise here
    try:
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,
                verbose=False,
                **kwargs,
            )
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of model {getattr(meta, 'dataset', '')!r} failed: {exc}") from exc
    finally:
        for lg, level in zip(quiet_loggers, levels, strict=True):
            lg.setLevel(level)

    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    diffs = _parity(wrapped, proto, sample, outputs, CPU)
    cuda_diffs = _parity(wrapped, proto, sample, outputs, CUDA) if cuda_usable()[0] else {}
    for provider, measured in (("CPU", diffs), ("CUDA", cuda_diffs)):
        worst = max(measured.values(), default=0.0)
        if not worst <= tolerance:
            path.unlink(missing_ok=True)
            raise ExportError(
                f"ONNX parity check failed on onnxruntime's {provider} provider: max abs difference {worst:.3g} > "
                f"{tolerance:g} (per batch size: {measured}); the file was not kept"
            )

    table = None if part else getattr(meta, "table", None)
    raw_figures: dict[str, float] = {}
    if table is not None:  # a raw table: its fitted preprocessing goes in front, checked on raw rows
        from trainforge.exporting.tabular import attach, raw_parity

        proto = attach(proto, table, INPUT_NAME)
        raw_figures = raw_parity(proto, table, wrapped, outputs, meta.task)
    generative = bool(getattr(model, "generative", False)) and not part
    metadata = {
        "task": meta.task,
        "input_name": INPUT_NAME,
        "input_shape": json.dumps(["batch", *(int(d) for d in sample.shape[1:])]),
        "input_dtype": "float32",
        "outputs": json.dumps(outputs),
        "class_names": json.dumps(meta.class_names),
        "feature_names": json.dumps(None if generative else meta.feature_names),
        "normalization": json.dumps({"mean": np.asarray(meta.mean).tolist(), "std": np.asarray(meta.std).tolist(),
                                     "applied_in_graph": True}),
        "version": __version__,
        "mlflow_run_id": run_id or "",
        "model": (config or {}).get("model", {}).get("name", ""),
        "dataset": meta.dataset,
        "opset": str(opset_used),
        "parity_max_abs_diff": json.dumps({str(k): v for k, v in diffs.items()}),
        "parity_cuda_max_abs_diff": json.dumps({str(k): v for k, v in cuda_diffs.items()} or None),
        "part": part or "",
        "columns": json.dumps([c.to_dict() for c in table.columns] if table is not None else None),
        "raw_parity": json.dumps(raw_figures or None),
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, str(value)
    proto.producer_name = "trainforge"
    proto.producer_version = __version__
    onnx.save(proto, str(path))
    seconds = time.perf_counter() - started
    log.info("exported %s (opset %d, parity %s) in %.1f s", path, opset_used, diffs, seconds)
    return ExportReport(path, opset_used, diffs, seconds, metadata, cuda_diffs, raw_figures,
                        None if table is None else table.heldout.head(5))


def export_sample(model: Any, rows: np.ndarray) -> np.ndarray:
    """The parity sample: data rows, or for a generator its deterministic ``example_input`` of as many rows."""
    if getattr(model, "generative", False):
        return model.example_input(len(rows)).detach().cpu().numpy().astype(np.float32)
    return rows


def _parity(wrapped: Any, proto: Any, sample: np.ndarray, outputs: list[str], provider: str) -> dict[int, float]:
    """Max abs difference of every output, torch (CPU, float32) vs onnxruntime on ``provider``, at batch 1
    and ``len(sample)``. An empty dict when a CUDA session falls back to the CPU (logged)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=session_providers([provider]))
    if session.get_providers()[0] != provider:
        log.warning("parity on %s skipped: onnxruntime runs the model on %s", provider, session.get_providers()[0])
        return {}
    diffs: dict[int, float] = {}
    for n in sorted({1, len(sample)}):
        batch = sample[:n]
        with torch.inference_mode():
            expected = [t.numpy() for t in wrapped(torch.from_numpy(batch))]
        got = session.run(outputs, {INPUT_NAME: batch})
        diffs[n] = float(max(np.max(np.abs(e - g)) if e.size else 0.0 for e, g in zip(expected, got, strict=True)))
    return diffs


def _warn_cut_short(run: Any, best_epoch: int, planned: int) -> None:
    """Say that a run's training did not finish (KILLED, FAILED, or RUNNING with its process gone)."""
    from mlflow.tracking import MlflowClient

    try:
        reached = max((m.step for m in MlflowClient().get_metric_history(run.info.run_id, "train_loss")), default=0)
    except Exception:  # noqa: BLE001 - the warning must not stop the export
        reached = 0
    log.warning("run %s is %s: training was cut short at epoch %s of %d planned; exporting its best epoch %d",
                run.info.run_id, run.info.status, reached or "?", planned, best_epoch)


SHA256_TAG = tag.ONNX_SHA256


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_onnx_artifact(path: str | Path, run_id: str) -> None:
    """Log ``path`` as the run's ``onnx/model.onnx`` and record its SHA-256 in the tag ``trainforge.onnx_sha256``,
    which ``trainforge predict runs:/RUN_ID`` checks before it runs the file."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.log_artifact(str(path), artifact_path="onnx", run_id=run_id)
    MlflowClient().set_tag(run_id, SHA256_TAG, file_sha256(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``trainforge.*`` metadata of an ONNX file, JSON values decoded. Raises ExportError if unreadable."""
    import onnxruntime as ort

    try:
        raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    except Exception as exc:
        raise ExportError(f"{path}: not a readable ONNX model ({exc})") from None
    return decode_metadata(raw)


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith(META_PREFIX):
            try:
                out[key[len(META_PREFIX):]] = json.loads(value)
            except ValueError:
                out[key[len(META_PREFIX):]] = value
    return out


def export(
    run_id: str,
    output: str | Path | None = None,
    *,
    tracking_uri: str | None = None,
    opset: int | None = None,
    log_to_run: bool = False,
    part: str | None = None,
) -> ExportReport:
    """Rebuild the model of MLflow run ``run_id`` from its ``checkpoints/best.pt`` and export it.

    The parity check uses the run's test split, re-created from the dataset and seed in the checkpoint's
    config. ``output`` defaults to ``./<run_id>.onnx`` (``./<run_id>.<part>.onnx`` with ``part``, e.g.
    ``"encoder"``). A run of another model kind (e.g. a scikit-learn estimator, see
    :mod:`trainforge.kinds`) is re-exported by that kind. Raises :class:`TrainforgeError` subclasses when the run, its
    checkpoint, the part or the data cannot be found.
    """
    from trainforge.contracts import DataMeta
    from trainforge.kinds import KIND_TAG, get_kind
    from trainforge.tracking import store as tracking
    from trainforge.training import data as data_mod
    from trainforge.training.callbacks import load_checkpoint
    from trainforge.training.modeling import build_model
    from trainforge.training.tasks import get_task

    tracking.setup_uri(tracking_uri)
    run = tracking.get_run(run_id)
    kind = run.data.tags.get(KIND_TAG)
    if kind:  # not the epoch loop's torch module (e.g. a scikit-learn estimator): its kind re-exports it
        return get_kind(kind).export_run(run_id, output, part=part, log_to_run=log_to_run)
    local = tracking.download(run_id, "checkpoints/best.pt")
    checkpoint = load_checkpoint(local)
    config, meta = checkpoint["config"], DataMeta.from_dict(checkpoint["meta"])
    if run.info.status != "FINISHED":
        _warn_cut_short(run, int(checkpoint.get("epoch", 0)), int(config["trainer"]["epochs"]))
    model = build_model(config["model"], meta)
    model.load_state_dict(checkpoint["state_dict"])
    bundle = data_mod.load(config["dataset"], config["trainer"], task=meta.task)
    meta.table = bundle.meta.table  # a raw table's preprocessing, re-fitted on the same training rows
    task = get_task(meta.task, meta=meta)
    path = Path(output) if output else Path(f"{run_id}.{part}.onnx" if part else f"{run_id}.onnx")
    sample = export_sample(model, data_mod.sample_rows(bundle.test))
    report = export_model(model, task, meta, sample, path, run_id=run_id, config=config, opset=opset, part=part)
    if log_to_run:
        log_onnx_artifact(report.path, run_id)
    return report
