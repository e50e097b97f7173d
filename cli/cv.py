"""``trainforge train --cv K``: resolve the config, call :func:`trainforge.cv.runner.cross_validate`, print.

torch and MLflow are imported inside, so ``trainforge --help`` stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import click


def train_cv(opts: Any) -> None:
    """Run the K folds and the refit of ``train``'s resolved :class:`~trainforge.run.options.RunOptions`;
    print one JSON object (``--json``) or a summary. ``--resume`` and ``--nproc`` are usage errors here."""
    from trainforge.cv.runner import cross_validate

    if opts.resume or opts.nproc > 1:
        raise click.UsageError("--cv cannot be combined with --resume or --nproc")
    result = cross_validate(opts, on_start=lambda run_id: click.echo(f"run {run_id} started", err=True))
    as_json = opts.json
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
