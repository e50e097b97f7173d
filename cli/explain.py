"""``trainforge explain SOURCE``: attributions of a run's model, checked (click only; the work is in
:mod:`trainforge.explaining.api`)."""

from __future__ import annotations

import json

import click

from trainforge.explaining import METHODS

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"


@click.command(epilog="""\b
Examples:
  trainforge explain RUN_ID                        # the run's test split, methods that fit the model
  trainforge explain RUN_ID --json --log-to-run    # importances and checks as JSON, explain/ on the run
  trainforge explain runs:/RUN_ID -m shap -m integrated-gradients --rows 200
  trainforge explain model.onnx --input rows.csv --target label --output attributions.csv

\b
Methods: permutation importance, shap (PermutationExplainer) and kernel-shap on the ONNX file through
onnxruntime; integrated-gradients (captum) on the torch model; occlusion on images. Checks: IG completeness
<= 1 %, SHAP additivity <= 1e-4, model randomisation (Spearman < 0.5 against re-initialised weights),
top-k agreement of SHAP and IG. A failed check is a warning naming it.""")
@click.argument("source")
@click.option("--input", "-i", "input_path", type=click.Path(dir_okay=False),
              help="Rows to explain (.csv, .parquet, .npy; default: the run's test split).")
@click.option("--target", help="Column of --input with the true values (default: the run's dataset.target).")
@click.option("--method", "-m", "methods", multiple=True, type=click.Choice(METHODS),
              help="Repeatable. Default: what fits the model.")
@click.option("--rows", type=click.IntRange(min=1), help="Explain only the first N rows.")
@click.option("--background", type=click.IntRange(min=1), default=100, show_default=True,
              help="Training rows SHAP's masker samples (shap's and mlflow.shap's default size).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Shuffles per feature of permutation importance (scikit-learn's default).")
@click.option("--budget", type=click.IntRange(min=1), help="Refuse when the methods would make more model calls.")
@click.option("--no-randomisation", is_flag=True, help="Skip the model-randomisation check (it re-runs each method).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="CSV: one attribution per row and feature.")
@click.option("--log-to-run", is_flag=True, help="Log explain/ artifacts and explain_* metrics to the run.")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print importances and checks as one JSON object.")
def explain(source: str, input_path: str | None, target: str | None, methods: tuple[str, ...], rows: int | None,
            background: int, repeats: int, budget: int | None, no_randomisation: bool, output: str | None,
            log_to_run: bool, tracking_uri: str | None, as_json: bool) -> None:
    """Explain a model: global importances and per-row attributions, with checks that they mean something."""
    from trainforge.explaining import require_extra
    from trainforge.explaining.api import ExplainSettings
    from trainforge.explaining.api import explain as run_explain

    require_extra()

    settings = ExplainSettings(methods=tuple(methods), rows=rows, background=background, repeats=repeats,
                               budget=budget, randomise=not no_randomisation)
    report = run_explain(source, input_path, target=target, settings=settings, log_to_run=log_to_run,
                         output=output, tracking_uri=tracking_uri, progress=not as_json)
    if as_json:
        for line in report.warnings:
            click.echo(f"warning: {line}", err=True)
        click.echo(json.dumps(report.to_dict()))
        return
    echo_report(report.to_dict(), source)


def echo_report(data: dict, what: str) -> None:
    """Print an :meth:`~trainforge.explaining.api.ExplainReport.to_dict` of ``what`` (the source explained):
    the top features and model calls of each method, the checks, the failed checks' warnings (stderr) and the
    artifacts logged."""
    click.echo(f"{what}: {data['rows']} rows explained")
    for line in data["warnings"]:
        click.echo(f"warning: {line}", err=True)
    for method, values in data["importance"].items():
        top = sorted(values, key=lambda f: -values[f])[:5]
        click.echo(f"  {method:<22} {data['calls'][method]:>12,} model calls  top: "
                   + ", ".join(f"{f} ({values[f]:.3g})" for f in top))
    for name, value in data["checks"].items():
        shown = "skipped" if value is None else f"{value:.4g}"
        click.echo(f"  check {name:<36} {shown}")
    if data["artifacts"]:
        click.echo(f"logged {len(data['artifacts'])} artifacts under explain/ of run {data['run_id']}")
