"""Log a verified ONNX file to its MLflow run: the ``onnx/model.onnx`` artifact and two MLflow models.

- ``<name>`` (e.g. ``mlp-iris``, ``study-best``): a pyfunc model (:mod:`trainforge.exporting.serving`,
  logged as code with the ``.onnx`` file as its artifact). Its signature names the training features and
  the output columns; ``mlflow models serve``, ``mlflow models predict`` and
  ``mlflow.pyfunc.load_model(...).predict(df)`` return the class name and one probability per class (or
  the regression value), as ``trainforge predict`` does. Requirements: numpy, pandas, onnxruntime.
- ``<name>-onnx``: the plain ONNX flavor (``mlflow.onnx``) for ONNX-only consumers; its pyfunc takes a bare
  tensor ``{"input": (N, *input_shape) float32}`` and returns the graph's outputs (logits, probabilities).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

#: the pyfunc model's code: executed by MLflow to load the model, imports no trainforge module
SERVING_CODE = Path(__file__).with_name("serving.py")
#: the modules the serving code imports, logged beside it (MLflow ``code_paths``): it runs without trainforge
SERVING_LIBS = [str(Path(__file__).with_name(name)) for name in ("sessions.py", "metadata.py")]


def export_and_log(result: Any, model: Any, task: Any, meta: Any, bundle: Any, workdir: Path,
                   quantize: str = "none", name: str | None = None, exporter: Any = None) -> None:
    """Export the verified ONNX file and log it (:func:`log_onnx`; ``name`` is the MLflow model's name).

    ``quantize="int8"``: the verified fp32 file is quantized (:func:`trainforge.exporting.quantize.quantize_model`,
    calibrated on the training split) and the int8 file is what gets logged; the parity metrics logged are
    the fp32 gate's, the file it was derived from.
    ``exporter``: the run's exporter (:mod:`trainforge.exporting.jobs`) the job was already submitted to
    (see :func:`export_job`); None exports here. Raises :class:`~trainforge.errors.ExportError` when the
    gate refuses the model.
    """
    import dataclasses

    from trainforge.exporting.jobs import InProcessExporter

    if exporter is None:
        exporter = InProcessExporter()
        exporter.submit(export_job(model, task, meta, bundle, workdir, result.run_id, result.config))
    report = exporter.result()
    if quantize == "int8":
        from trainforge.exporting.quantize import CALIBRATION_ROWS, quantize_model
        from trainforge.training.data import sample_rows

        quantized = quantize_model(report.path, workdir / "int8" / "model.onnx",
                                   calibration=sample_rows(bundle.train, CALIBRATION_ROWS))
        report = dataclasses.replace(report, path=quantized.path)
    log_onnx(result, report, exporter.job.sample, name=name)


def parity_sample(model: Any, bundle: Any) -> np.ndarray:
    """The export's parity sample: the test split's first rows (a generator's input codes instead)."""
    from trainforge.exporting.exporter import export_sample
    from trainforge.training.data import sample_rows

    return export_sample(model, sample_rows(bundle.test))


def export_job(model: Any, task: Any, meta: Any, bundle: Any, workdir: Path, run_id: str | None,
               config: dict[str, Any], checkpoint: Path | None = None) -> Any:
    """The :class:`~trainforge.exporting.jobs.ExportJob` of a run: ``<workdir>/model.onnx``, checked on
    :func:`parity_sample`; ``checkpoint`` is the ``best.pt`` a forked exporter rebuilds the model from."""
    from trainforge.exporting.jobs import ExportJob

    return ExportJob(model, task, meta, parity_sample(model, bundle), workdir / "model.onnx", run_id, config,
                     checkpoint)


def model_name(config: dict[str, Any] | None) -> str:
    """``<model>-<dataset>`` from a resolved config (e.g. ``cnn-digits``), else ``model``."""
    cfg = config or {}
    parts = [(cfg.get(k) or {}).get("name") for k in ("model", "dataset")]
    return "-".join(str(p) for p in parts if p) or "model"


def log_onnx(result: Any, report: Any, sample: np.ndarray, name: str | None = None) -> None:
    """Log a verified ONNX file as ``onnx/model.onnx`` and as the MLflow models ``name`` (pyfunc, the one
    ``result.model_uri`` and the ``trainforge.model_uri`` tag point at) and ``name-onnx`` (ONNX flavor, tag
    ``trainforge.onnx_model_uri``);
    fill ``result.model_uri``, ``onnx_path`` and ``parity``. ``name`` defaults to :func:`model_name`."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from trainforge.exporting import metadata
    from trainforge.exporting.exporter import log_onnx_artifact
    from trainforge.exporting.providers import usable_providers
    from trainforge.exporting.sessions import open_session
    from trainforge.tracking import store as tracking

    name = name or model_name(getattr(result, "config", None))
    with tracking.deferred_interrupt():
        log_onnx_artifact(report.path, result.run_id)  # with its sha256, which predict checks
        mlflow.log_metrics({**{f"onnx_parity_max_abs_diff_batch_{n}": d for n, d in report.max_abs_diff.items()},
                            **{f"onnx_raw_{k}": v for k, v in (getattr(report, "raw_parity", None) or {}).items()}},
                           run_id=result.run_id)

    from trainforge.data import Column, raw_inputs

    session, _ = open_session(report.path, "cpu")
    meta = metadata.from_session(session)
    raw = getattr(report, "raw_example", None)
    example = sample[:5] if raw is None else raw
    feeds = {"input": example} if raw is None else raw_inputs(raw, [Column.from_dict(c) for c in meta["columns"]])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, feeds), strict=True))
    with tracking.deferred_interrupt():
        info = mlflow.pyfunc.log_model(name=name, python_model=str(SERVING_CODE),
                                       artifacts={"onnx": str(report.path)}, code_paths=SERVING_LIBS,
                                       signature=serving_signature(meta, outputs),
                                       input_example=serving_example(meta, example),
                                       pip_requirements=requirements(("numpy", "pandas")))
        plain = mlflow.onnx.log_model(onnx.load(str(report.path)), name=f"{name}-onnx",
                              signature=infer_signature(feeds, outputs),
                              input_example=feeds, save_as_external_data=False,
                              onnx_execution_providers=usable_providers(),
                              pip_requirements=requirements(("onnx", "numpy")))
        client = MlflowClient()
        client.set_tag(result.run_id, tag.MODEL_URI, info.model_uri)
        client.set_tag(result.run_id, tag.ONNX_MODEL_URI, plain.model_uri)
    result.model_uri = info.model_uri
    result.onnx_path = tracking.download(result.run_id, "onnx/model.onnx")
    result.parity = {str(k): v for k, v in report.max_abs_diff.items()}


def serving_signature(meta: dict[str, Any], outputs: dict[str, np.ndarray]) -> Any:
    """The pyfunc model's signature: one ``double`` column per training feature (a tensor
    ``(-1, *input_shape)`` float32 when the data has no feature names; a raw table: one optional column of
    MLflow's ``any`` type per used column, its cells as the user has them), and the output columns of
    :func:`trainforge.exporting.serving.to_frame` (``prediction`` string/double, ``prob_<class>`` float)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    names = meta.get("feature_names")
    if meta.get("columns"):  # a raw table: its raw columns, strings and numbers (NaN or null for missing)
        from mlflow.types.schema import AnyType

        # raw rows as the user has them: an integer or string in a numeric column ("n/a"), numbers in a
        # categorical one; MLflow's "double" refuses int64 cells. The graph's inputs are built from any of them.
        inputs = Schema([ColSpec(AnyType(), c["name"], required=False)
                         for c in meta["columns"] if c["type"] != "drop"])
    elif names:
        inputs = Schema([ColSpec("double", str(n)) for n in names])
    else:
        shape = tuple(int(d) for d in meta["input_shape"][1:])
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))])
    if meta["task"] == "classification":
        cols = [ColSpec("string", "prediction"), *(ColSpec("float", f"prob_{c}") for c in meta["class_names"])]
    else:
        pred = outputs.get("prediction", next(iter(outputs.values())))
        width = int(np.prod(pred.shape[1:])) if pred.ndim > 1 else 1
        cols = [ColSpec("float", "prediction")] if width == 1 else \
            [ColSpec("float", f"prediction_{i}") for i in range(width)]
    return ModelSignature(inputs=inputs, outputs=Schema(cols))


def serving_example(meta: dict[str, Any], rows: np.ndarray) -> Any:
    """A few rows as the pyfunc model's input example: a DataFrame with the feature names, else the array."""
    import pandas as pd

    if meta.get("columns") and isinstance(rows, pd.DataFrame):  # a raw table: as given, in the signature's types
        types = {c["name"]: c["type"] for c in meta["columns"] if c["type"] != "drop"}
        rows = rows[[c for c in rows.columns if str(c) in types]].copy()
        for name in rows.columns:
            if types[str(name)] == "numeric":
                rows[name] = pd.to_numeric(rows[name], errors="coerce").astype(np.float64)
            else:
                rows[name] = rows[name].astype(object).where(rows[name].notna(), None).map(
                    lambda v: v if v is None or isinstance(v, str) else str(v))
        return rows
    names = meta.get("feature_names")
    if not names or not isinstance(rows, np.ndarray):  # an array as given
        return rows

    return pd.DataFrame(rows.reshape(len(rows), -1).astype(np.float64), columns=[str(n) for n in names])


def requirements(extra: tuple[str, ...]) -> list[str]:
    """Pinned requirements: ``extra`` (e.g. numpy, pandas) and the one onnxruntime distribution installed.

    Given explicitly because MLflow's inference (a subprocess loading the model, several seconds per run)
    lists both ``onnxruntime`` and ``onnxruntime-gpu``, which must never be installed together, and
    would add what the logging process imported (torch) rather than what inference needs.
    """
    from importlib import metadata

    found = []
    for dist in (*extra, "onnxruntime-gpu", "onnxruntime"):
        try:
            found.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
        if dist == "onnxruntime-gpu":
            break  # provides the onnxruntime module; never pin both
    return found
