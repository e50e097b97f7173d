"""Export to ONNX as a gate: export, check, compare with torch, refuse on a parity breach, embed metadata.

The exported graph is :class:`~trainforge.training.modeling.InferenceModel`: raw float32 features
``(N, *input_shape)`` in (standardization is inside the graph), the task's outputs out (``logits`` and
``probabilities`` ``(N, K)`` for classification, ``prediction`` ``(N, T)`` for regression). The batch
axis is dynamic. The file is self-contained (``external_data=False``): no ``model.onnx.data`` sidecar.

``metadata_props`` carry what inference needs (task, input spec, outputs, class and feature names,
normalization, versions, run id, parity on onnxruntime's CPU and CUDA providers, part): the keys are
listed in :mod:`trainforge.exporting.metadata`, which builds, writes and reads them for every export.

A raw table's model (``trainforge.columns`` set) takes the raw columns instead of ``input``: one ``(N, 1)``
input per column, float32 with NaN or strings (:mod:`trainforge.exporting.tabular`); its fitted
preprocessing (skl2onnx) is merged in front of the network and the whole graph is checked on raw held-out rows.

A generator (a model with ``example_input``, e.g. the GAN) is exported from its input code: the graph
takes e.g. a latent ``(N, Z)`` float32 and returns ``samples`` ``(N, *input_shape)``.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.errors import ExportError
from trainforge.exporting.metadata import INPUT_NAME, PREFIX
from trainforge.exporting.providers import CPU, CUDA, cuda_usable
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

#: Largest absolute difference between torch and onnxruntime outputs that export accepts.
PARITY_TOLERANCE = 1e-4
META_PREFIX = PREFIX


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


def _export_model(model: Any, task: Any, meta: Any, sample: np.ndarray, path: Path, *, run_id: str | None = None,
                  config: dict[str, Any] | None = None, opset: int | None = None,
                  tolerance: float = PARITY_TOLERANCE, part: str | None = None) -> ExportReport:
    import onnx

    from trainforge.exporting import metadata

    started = time.perf_counter()
    model = model.to("cpu").eval()
    wrapped, outputs = _wrapped(model, task, part)
    sample = np.ascontiguousarray(sample[:256], dtype=np.float32)
    if len(sample) == 0:
        raise ExportError("cannot check the export: no sample rows")
    proto = _to_onnx(wrapped, sample, path, outputs, opset, meta)
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
        from trainforge.exporting.tabular import attach, raw_parity, torch_reference

        proto = attach(proto, table, INPUT_NAME)
        raw_figures = raw_parity(proto, table, torch_reference(wrapped), outputs, meta.task)
    generative = bool(getattr(model, "generative", False)) and not part
    gate = metadata.Gate(opset_used, diffs, cuda_diffs or None, raw_figures or None)
    entries = metadata.build(meta, outputs, gate, run_id=run_id, config=config, part=part or "",
                             input_shape=tuple(sample.shape[1:]) if generative else None, table=table)
    metadata.write(proto, entries)
    onnx.save(proto, str(path))
    seconds = time.perf_counter() - started
    log.info("exported %s (opset %d, parity %s) in %.1f s", path, opset_used, diffs, seconds)
    return ExportReport(path, opset_used, diffs, seconds, entries, cuda_diffs, raw_figures,
                        None if table is None else table.heldout.head(5))


def _wrapped(model: Any, task: Any, part: str | None) -> tuple[Any, list[str]]:
    """The module the graph is traced from and its output names: the whole model with the task's outputs
    (:class:`~trainforge.training.modeling.InferenceModel`), or one of ``model.export_parts()``."""
    from trainforge.training.modeling import InferenceModel, PartModel

    if not part:
        return InferenceModel(model, task).eval(), list(task.onnx_outputs)
    parts = model.export_parts() if hasattr(model, "export_parts") else {}
    if part not in parts:
        raise ExportError(f"model has no part {part!r} to export; parts: {', '.join(sorted(parts)) or '(none)'}")
    module, output_name = parts[part]
    return PartModel(model, module).eval(), [output_name]


def _to_onnx(wrapped: Any, sample: np.ndarray, path: Path, outputs: list[str], opset: int | None, meta: Any) -> Any:
    """``torch.onnx.export`` (dynamo, dynamic batch axis, one self-contained file) then ``onnx.checker``;
    the checked ``ModelProto``. Raises :class:`ExportError` (the file removed) when either fails."""
    import onnx
    import torch

    example = torch.from_numpy(np.repeat(sample[:1], 2, axis=0))  # batch 2 so the batch axis stays symbolic
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    quiet_loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in quiet_loggers]
    for lg in quiet_loggers:
        lg.setLevel(logging.ERROR)  # the exporter's progress and torchvision notices are noise here
    try:
        with warnings.catch_warnings(), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (example,), str(path), input_names=[INPUT_NAME], output_names=outputs,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                              verbose=False, **kwargs)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of model {getattr(meta, 'dataset', '')!r} failed: {exc}") from exc
    finally:
        for lg, level in zip(quiet_loggers, levels, strict=True):
            lg.setLevel(level)
    return proto


def export_sample(model: Any, rows: np.ndarray) -> np.ndarray:
    """The parity sample: data rows, or for a generator its deterministic ``example_input`` of as many rows."""
    if getattr(model, "generative", False):
        return model.example_input(len(rows)).detach().cpu().numpy().astype(np.float32)
    return rows


def _parity(wrapped: Any, proto: Any, sample: np.ndarray, outputs: list[str], provider: str) -> dict[int, float]:
    """Max abs difference of every output, torch (CPU, float32) vs onnxruntime on ``provider``, at batch 1
    and ``len(sample)``. An empty dict when a CUDA session falls back to the CPU (logged)."""
    import torch

    from trainforge.exporting.sessions import open_session

    session, active = open_session(proto.SerializeToString(), provider)
    if active != provider:
        log.warning("parity on %s skipped: onnxruntime runs the model on %s", provider, active)
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
    """The ``trainforge.*`` metadata of an ONNX file (:func:`trainforge.exporting.metadata.read`)."""
    from trainforge.exporting import metadata

    return metadata.read(path)


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """``trainforge.*`` entries decoded (:func:`trainforge.exporting.metadata.decode`)."""
    from trainforge.exporting import metadata

    return metadata.decode(raw)


def export(
    run_id: str,
    output: str | Path | None = None,
    *,
    tracking_uri: str | None = None,
    opset: int | None = None,
    log_to_run: bool = False,
    part: str | None = None,
) -> ExportReport:
    """Rebuild the model of MLflow run ``run_id`` from its best checkpoint and export it.

    The parity check uses the run's test split, re-created from the dataset and seed in the checkpoint's
    config. ``output`` defaults to ``./<run_id>.onnx`` (``./<run_id>.<part>.onnx`` with ``part``, e.g.
    ``"encoder"``). A run of another model kind (e.g. a scikit-learn estimator, see
    :mod:`trainforge.kinds`) is re-exported by that kind. Raises :class:`TrainforgeError` subclasses when the run, its
    checkpoint, the part or the data cannot be found.
    """
    from trainforge.kinds import get_kind
    from trainforge.tracking import checkpoints
    from trainforge.tracking import store as tracking
    from trainforge.training import data as data_mod
    from trainforge.training.checkpoint import rebuild
    from trainforge.training.tasks import get_task

    tracking.setup_uri(tracking_uri)
    run = tracking.get_run(run_id)
    kind = run.data.tags.get(tag.FIT)
    if kind:  # not the epoch loop's torch module (e.g. a scikit-learn estimator): its kind re-exports it
        return get_kind(kind).export_run(run_id, output, part=part, log_to_run=log_to_run)
    checkpoint = checkpoints.fetch(run_id)
    model, task, meta, config = rebuild(checkpoint)
    if run.info.status != "FINISHED":
        _warn_cut_short(run, int(checkpoint.get("epoch", 0)), int(config["trainer"]["epochs"]))
    bundle = data_mod.load(config["dataset"], config["trainer"], task=meta.task)
    meta.table = bundle.meta.table  # a raw table's preprocessing, re-fitted on the same training rows
    task = get_task(meta.task, meta=meta)
    path = Path(output) if output else Path(f"{run_id}.{part}.onnx" if part else f"{run_id}.onnx")
    sample = export_sample(model, data_mod.sample_rows(bundle.test))
    report = export_model(model, task, meta, sample, path, run_id=run_id, config=config, opset=opset, part=part)
    if log_to_run:
        log_onnx_artifact(report.path, run_id)
    return report
