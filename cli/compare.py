"""``trainforge compare``: parse, call :func:`trainforge.cv.compare.compare`, print the leaderboard or JSON.

torch, scikit-learn and MLflow are imported inside the command, so ``trainforge --help`` stays fast.
"""

from __future__ import annotations

import json
import math

import click

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"


@click.command(epilog="""\b
Examples:
  trainforge compare --model mlp,random-forest,logistic-regression --dataset wine --cv 5
  trainforge compare --model mlp,gradient-boosting --dataset csv -p dataset.path=data.csv -p dataset.target=y
  trainforge compare --model mlp,random-forest --cv 5 -p trainer.monitor=val_accuracy --register wine-best --json

\b
Every model runs on the same folds and is tested on the same test split; each is refit on all non-test rows
and exported through the ONNX gate. -p options apply to every model; a --config model: section only to the
model it names. The top two are compared by the corrected resampled t-test (Nadeau & Bengio 2003).""")
@click.option("--model", "models", required=True, help="Models to compare, comma-separated (two or more).")
@click.option("--dataset", help="Dataset plugin (default digits).")
@click.option("--cv", "folds", type=click.IntRange(min=2), default=5, show_default=True, help="Folds.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file with the config tree.")
@click.option("-p", "--param", "params", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Set any plugin or trainer option for every model; VALUE is YAML. Repeatable.")
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs of the torch models (trainer.epochs).")
@click.option("--seed", type=int, help="Seed for the test split, the folds and the weights (default 0).")
@click.option("--register", help="Register the winner's refit model under this name.")
@click.option("--experiment", help="MLflow experiment name (default: trainforge).")
@click.option("--run-name", help="MLflow run name of the compare run (default: compare-DATASET-cvK).")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help='Print {"leaderboard": [...], ...} as one JSON object.')
def compare(models: str, dataset: str | None, folds: int, config_file: str | None, params: tuple[str, ...],
            epochs: int | None, seed: int | None, register: str | None, experiment: str | None,
            run_name: str | None, tracking_uri: str | None, as_json: bool) -> None:
    """Rank model kinds by K-fold cross-validation on identical folds, with test score, latency and size."""
    from trainforge.cv.compare import compare as run_compare

    names = [m.strip() for m in models.split(",") if m.strip()]
    board = run_compare(names, folds, config_file, overrides=params, tracking_uri=tracking_uri,
                        experiment=experiment, run_name=run_name, register=register, dataset__name=dataset,
                        trainer__epochs=epochs, trainer__seed=seed)
    if as_json:
        click.echo(json.dumps(board.to_dict(), default=str))
        return
    click.echo(f"compare run {board.run_id}: {board.metric} over {folds} folds ({board.mode} is best)")
    click.echo(f"  {'model':<22} {'CV mean ± std':>20} {'test':>9} {'fit s':>7} {'ms/row@1':>9} "
               f"{'ms/row@64':>9} {'ONNX KiB':>9}")
    for r in board.rows:
        click.echo(f"  {r.model:<22} {r.cv_mean:>11.4f} ± {r.cv_std:<6.4f} {r.test_score:>9.4f} "
                   f"{r.fit_seconds:>7.1f} {_num(r.p50_ms_per_row_batch1):>9} {_num(r.p50_ms_per_row_batch64):>9} "
                   f"{(r.onnx_bytes or 0) / 1024:>9.1f}")
    if board.paired_test:
        t = board.paired_test
        verdict = "within noise" if t["within_noise"] else "not within noise"
        click.echo(f"{t['a']} vs {t['b']}: mean fold difference {t['mean_difference']:+.4f}, corrected t "
                   f"{t['t']:.2f}, p = {t['p_value']:.3f} ({verdict} at 0.05)")
    if board.registered:
        click.echo(f"registered {board.registered}")


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"
