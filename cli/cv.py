"""``trainforge train --cv K``: resolve the config, call :func:`trainforge.cv.runner.cross_validate`, print.

torch and MLflow are imported inside, so ``trainforge --help`` stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import click


def train_cv(folds: int, config_file: str | None, params: tuple[str, ...], *, as_json: bool, resume: str | None,
             nproc: int, **options: Any) -> None:
    """Run the K folds and the refit of ``train``'s options; print one JSON object (``--json``) or a summary."""
    from trainforge.cv.runner import cross_validate
    from trainforge.run.api import build_config

    if resume or nproc > 1:
        raise click.UsageError("--cv cannot be combined with --resume or --nproc")
    o = options
    cfg = build_config(config_file, params, model__name=o["model"], dataset__name=o["dataset"],
                       optimizer__name=o["optimizer"], scheduler__name=o["scheduler"], optimizer__lr=o["lr"],
                       trainer__epochs=o["epochs"], trainer__batch_size=o["batch_size"], trainer__seed=o["seed"],
                       trainer__device=o["device"], trainer__precision=o["precision"], trainer__patience=o["patience"])
    result = cross_validate(cfg, folds, tracking_uri=o["tracking_uri"], experiment=o["experiment"],
                            run_name=o["run_name"], export=not o["no_export"], quiet=o["quiet"], on_start=lambda run_id: click.echo(f"run {run_id} started", err=True))
    if as_json:
        click.echo(json.dumps(result.to_dict(), default=str))
        return
    click.echo(f"cv run {result.run_id}: {len(result.folds)} {result.kind} folds, "
               f"{result.seconds:.1f} s of training")
    for key in sorted(k for k in result.metrics if k.startswith("cv_") and k.endswith("_mean")):
        base = key[3:-5]
        click.echo(f"  {base:<16} {result.metrics[key]:.4f} ± {result.metrics[f'cv_{base}_std']:.4f}")
    if result.refit is not None:
        click.echo(f"refit run {result.refit.run_id} ({result.refit.epochs_run} epochs on all non-test rows):")
        for key, value in result.refit.metrics.items():
            click.echo(f"  {key:<16} {value:.4f}")
        if result.refit.onnx_path:
            click.echo(f"ONNX model: {result.refit.onnx_path}")
    if result.warning:
        click.echo(f"Warning: {result.warning}", err=True)
