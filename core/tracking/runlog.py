"""What a training run writes to MLflow: params, tags, artifacts, and the ONNX model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trainforge import config as config_mod

log = logging.getLogger(__name__)


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def log_params(run_id: str, cfg: dict[str, Any], meta: Any) -> None:
    """Every resolved hyperparameter (``section.key``), the data's shape and sizes, and plugin origins."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from trainforge import __version__, manager

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
        except Exception as exc:  # never hide the error that brought us here
            from trainforge.errors import environment_fault

            if (fault := environment_fault(exc)) is not None:  # e.g. the store became read-only: no traceback
                log.error("could not upload the checkpoint of run %s: %s", run_id, fault)
            else:
                log.exception("could not upload the checkpoint of run %s", run_id)


def predict_split(model: Any, split: Any, device: Any, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Targets and model outputs of a whole split as numpy arrays (``(N,)``/``(N, T)``, ``(N, K)``)."""
    import torch

    from trainforge.training.data import batches

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

    from trainforge.training.data import batches

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


def save_best_checkpoint(workdir: Path, cfg: dict[str, Any], trainer: Any, meta: Any) -> Path:
    """Write the best epoch's weights, config and data meta to ``<workdir>/checkpoints/best.pt``."""
    from trainforge.training.callbacks import save_checkpoint

    ckpt = workdir / "checkpoints" / "best.pt"
    best = trainer.history[trainer.best_epoch - 1] if trainer.best_epoch else {}
    save_checkpoint(ckpt, trainer.best_state or trainer.model.state_dict(), cfg, meta.to_dict(),
                    trainer.best_epoch, best)
    return ckpt


def log_artifacts(run_id: str, workdir: Path, cfg: dict[str, Any], trainer: Any, bundle: Any,
                  checkpoint_saved: bool = False) -> None:
    """Best checkpoint (written by :func:`save_best_checkpoint` unless ``checkpoint_saved``), resolved
    config (YAML), learning curves and the task's test plots (a confusion matrix, predicted vs actual,
    forecast vs actual, a reconstruction or sample grid)."""
    import mlflow

    from trainforge import plots

    meta = bundle.meta
    if not checkpoint_saved:
        save_best_checkpoint(workdir, cfg, trainer, meta)
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
