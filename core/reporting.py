"""What a training run writes to MLflow: params, tags, artifacts, and the ONNX model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import config as config_mod

log = logging.getLogger(__name__)


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def log_params(run_id: str, cfg: dict[str, Any], meta: Any) -> None:
    """Every resolved hyperparameter (``section.key``), the data's shape and sizes, and plugin origins."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from . import __version__, manager

    params = {k: _param_value(v) for k, v in config_mod.flatten(cfg).items()}
    params.update({
        "data.task": meta.task,
        "data.input_shape": json.dumps(list(meta.input_shape)),
        "data.output_dim": str(meta.output_dim),
        **{f"data.{split}_size": str(n) for split, n in meta.sizes.items()},
    })
    mlflow.log_params(params, run_id=run_id)
    tags = {"trainforge.version": __version__, "trainforge.task": meta.task}
    for section in config_mod.PLUGIN_SECTIONS:
        name = cfg[section]["name"]
        entry = manager.registry()[section][name]
        tags[f"trainforge.plugin.{section}"] = f"{name} ({entry.distribution} {entry.version})".strip()
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def upload_checkpoint(run_id: str, workdir: Path) -> None:
    """Upload ``checkpoints/`` if a checkpoint was written (also called when the fit fails)."""
    import mlflow

    folder = workdir / "checkpoints"
    if folder.is_dir() and any(folder.iterdir()):
        try:
            mlflow.log_artifacts(str(folder), artifact_path="checkpoints", run_id=run_id)
        except Exception:  # never hide the error that brought us here
            log.exception("could not upload the checkpoint of run %s", run_id)


def predict_split(model: Any, split: Any, device: Any, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Targets and model outputs of a whole split as numpy arrays (``(N,)``/``(N, T)``, ``(N, K)``)."""
    import torch

    from .data import batches

    model.eval()
    ys, outs = [], []
    with torch.inference_mode():
        for x, y in batches(split, batch_size):
            outs.append(model(x.to(device)).float().cpu().numpy())
            ys.append(y.cpu().numpy())
    return np.concatenate(ys), np.concatenate(outs)


def collect_split(model: Any, split: Any, device: Any, batch_size: int = 1024) -> tuple[np.ndarray, ...]:
    """``(x, y, outputs)`` of a whole split as numpy arrays; a generator's outputs are ``len(x)`` samples
    from its ``example_input`` instead."""
    import torch

    from .data import batches

    model.eval()
    xs, ys, outs = [], [], []
    with torch.inference_mode():
        for x, y in batches(split, batch_size):
            xs.append(x.cpu().numpy())
            ys.append(y.cpu().numpy())
            if not getattr(model, "generative", False):
                outs.append(model(x.to(device)).float().cpu().numpy())
        x_all = np.concatenate(xs)
        if getattr(model, "generative", False):
            outs = [model(model.example_input(len(x_all)).to(device)).float().cpu().numpy()]
    return x_all, np.concatenate(ys), np.concatenate(outs)


def log_artifacts(run_id: str, workdir: Path, cfg: dict[str, Any], trainer: Any, bundle: Any) -> None:
    """Best checkpoint, resolved config (YAML), learning curves and the task's test plots (a confusion
    matrix, predicted vs actual, forecast vs actual, a reconstruction or sample grid)."""
    import mlflow

    from . import plots
    from .callbacks import save_checkpoint

    meta = bundle.meta
    ckpt = workdir / "checkpoints" / "best.pt"
    best = trainer.history[trainer.best_epoch - 1] if trainer.best_epoch else {}
    save_checkpoint(ckpt, trainer.best_state or trainer.model.state_dict(), cfg, meta.to_dict(),
                    trainer.best_epoch, best)
    upload_checkpoint(run_id, workdir)

    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (workdir / "data_meta.json").write_text(json.dumps(meta.to_dict(), indent=1))
    mlflow.log_artifact(str(workdir / "config.yaml"), run_id=run_id)
    mlflow.log_artifact(str(workdir / "data_meta.json"), run_id=run_id)

    plot_dir = workdir / "plots"
    plot_dir.mkdir(exist_ok=True)
    plots.learning_curves(trainer.history, plot_dir / "learning_curves.png", meta.task,
                          main=getattr(trainer.task, "main_metric", None))
    x, y_true, out = collect_split(trainer.model, bundle.test, trainer.device, int(cfg["trainer"]["eval_batch_size"]))
    trainer.task.plots(plot_dir, x, y_true, out, meta)
    mlflow.log_artifacts(str(plot_dir), artifact_path="plots", run_id=run_id)


def export_and_log(result: Any, model: Any, task: Any, meta: Any, bundle: Any, workdir: Path) -> None:
    """Export the verified ONNX file, log it as ``onnx/model.onnx`` and as an MLflow ONNX model."""
    from .data import sample_rows
    from .exporter import export_model, export_sample

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

    from . import tracking
    from .predictor import usable_providers

    with tracking.deferred_interrupt():
        mlflow.log_artifact(str(report.path), artifact_path="onnx", run_id=result.run_id)
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
