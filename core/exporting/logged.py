"""Log a verified ONNX file to its MLflow run: the ``onnx/model.onnx`` artifact and an MLflow model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def export_and_log(result: Any, model: Any, task: Any, meta: Any, bundle: Any, workdir: Path) -> None:
    """Export the verified ONNX file, log it as ``onnx/model.onnx`` and as an MLflow ONNX model."""
    from trainforge.exporting.exporter import export_model, export_sample
    from trainforge.training.data import sample_rows

    sample = export_sample(model, sample_rows(bundle.test))
    report = export_model(model, task, meta, sample, workdir / "model.onnx", run_id=result.run_id,
                          config=result.config)
    log_onnx(result, report, sample)


def log_onnx(result: Any, report: Any, sample: np.ndarray) -> None:
    """Log a verified ONNX file as ``onnx/model.onnx`` and as an MLflow ONNX model (signature, example);
    fill ``result.model_uri``, ``onnx_path`` and ``parity``."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    from trainforge.exporting.exporter import log_onnx_artifact
    from trainforge.exporting.predictor import usable_providers
    from trainforge.tracking import store as tracking

    with tracking.deferred_interrupt():
        log_onnx_artifact(report.path, result.run_id)  # with its sha256, which predict checks
        mlflow.log_metrics({f"onnx_parity_max_abs_diff_batch_{n}": d for n, d in report.max_abs_diff.items()},
                           run_id=result.run_id)

    example = sample[:5]
    import onnxruntime as ort

    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, {"input": example}), strict=True))
    signature = infer_signature({"input": example}, outputs)
    from mlflow.tracking import MlflowClient

    with tracking.deferred_interrupt():
        info = mlflow.onnx.log_model(onnx.load(str(report.path)), name="model", signature=signature,
                                     input_example={"input": example}, save_as_external_data=False,
                                     onnx_execution_providers=usable_providers(),
                                     pip_requirements=_onnx_requirements())
        MlflowClient().set_tag(result.run_id, "trainforge.model_uri", info.model_uri)
    result.model_uri = info.model_uri
    result.onnx_path = tracking.download(result.run_id, "onnx/model.onnx")
    result.parity = {str(k): v for k, v in report.max_abs_diff.items()}


def _onnx_requirements() -> list[str]:
    """What the logged ONNX model needs: onnx, numpy and the one onnxruntime distribution installed.

    Given explicitly because MLflow's inference (a subprocess loading the model, several seconds per run)
    lists both ``onnxruntime`` and ``onnxruntime-gpu``, which must never be installed together.
    """
    from importlib import metadata

    found = []
    for dist in ("onnx", "numpy", "onnxruntime-gpu", "onnxruntime"):
        try:
            found.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
        if dist == "onnxruntime-gpu":
            break  # provides the onnxruntime module; never pin both
    return found
