"""``trainforge tune``: parse, build a :class:`~trainforge.tuning.settings.TuneSettings`, call
:func:`trainforge.tuning.tune.tune`, print a rich summary or one JSON object.

Optuna, torch and MLflow are imported inside the command, so ``trainforge --help`` stays fast.
"""

from __future__ import annotations

import json
import sys

import click

from trainforge.tuning.deployment import KNOWN, PROVIDERS
from trainforge.tuning.settings import DIRECTIONS, TuneSettings
from trainforge.tuning.study import PRUNERS, SAMPLERS

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"
JSON_KEYS = ("study", "best_value", "best_params", "parent_run_id", "onnx_path", "model_version",
             "n_complete", "n_pruned", "n_fail")


@click.command(epilog="""\b
Examples:
  trainforge tune --model cnn --dataset digits --n-trials 30 --pruner median
  trainforge tune --model cnn,mlp --optimizer adam,sgd --n-trials 40 --n-jobs 2 --study digits
  trainforge tune --study digits --n-trials 10          # resume: same settings, trial numbers continue
  trainforge tune --model mlp --dataset digits --cv 3 --n-trials 12 --pruner median
  trainforge tune --config space.yaml --storage sqlite:///optuna.db --json
  trainforge tune --study digits --storage postgresql://db/optuna --study-trials 50   # on each machine
  trainforge tune --model mlp,cnn --objective val_accuracy --objective latency_ms --latency-batch 64 \
      --search-quantization --n-trials 30 --select "latency_ms<=0.5"     # a Pareto front, one model shipped

\b
Parameter names: model / optimizer (when several are given), <model>.<param> (cnn.dropout1, mlp.width),
<optimizer>.<param> (adam.lr, sgd.momentum), trainer.batch_size. A search_space: section in --config
fixes (adam.lr: 0.001), narrows ({low:, high:, log:}) or replaces ({choices: [...]}) any of them; a tune:
section sets any option below by its field name (n_trials: 30). Default storage: the journal file
mlruns/optuna/journal.log. A study with no complete trial exits 1 with the most common failure reason.""")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="YAML config; its search_space: and tune: sections are read too.")
@click.option("-p", "--param", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Set a plugin or trainer option for every trial; VALUE is YAML. Repeatable.")
@click.option("--model", "models", help="Model plugin(s), comma-separated: several become a categorical choice.")
@click.option("--dataset", help="Dataset plugin (default digits).")
@click.option("--optimizer", "optimizers", help="Optimizer plugin(s), comma-separated (default adam).")
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs per trial (trainer.epochs).")
@click.option("--n-trials", type=click.IntRange(min=1),
              help="Trials this command runs (default 20; with --study-trials: an optional cap).")
@click.option("--study-trials", type=click.IntRange(min=1), metavar="N",
              help="Run trials until the study holds exactly N finished (complete or pruned) trials, counting "
                   "every worker on every machine that shares it; dead workers' trials are retried.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop starting trials after S seconds.")
@click.option("--study", help="Study name; an existing one is resumed. Default: MODELS-DATASET-TIMESTAMP.")
@click.option("--storage", help="Optuna storage: sqlite:///f.db, postgresql://..., mysql://..., or a *.log journal file.")
@click.option("--sampler", type=click.Choice(list(SAMPLERS)), help="Default tpe; nsga2 for multi-objective studies.")
@click.option("--pruner", type=click.Choice(list(PRUNERS)), help="Default median.")
@click.option("--metric", help="Validation metric to optimize (default val_accuracy, val_loss for regression).")
@click.option("--direction", type=click.Choice(list(DIRECTIONS)), help="Default: from the metric.")
@click.option("--n-jobs", type=click.IntRange(min=1), help="Worker processes on this machine (default 1).")
@click.option("--seed", type=int, help="Sampler seed (worker i uses seed+i); the data split follows trainer.seed.")
@click.option("--refit", is_flag=True, default=None, help="Retrain the best config on train+val before export.")
@click.option("--cv", type=click.IntRange(min=2), metavar="K",
              help="Score each trial by K-fold cross-validation (the mean over folds; NN folds train in lockstep "
                   "so the pruner sees the mean each epoch); the best config is refit on all non-test rows.")
@click.option("--register", help="Registered model name for the best model (default: the study name).")
@click.option("--export/--no-export", default=None, help="Export and register the best model (default) or skip it.")
@click.option("--experiment", help="MLflow experiment name (default: trainforge).")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No per-trial log lines.")
@click.option("--objective", "objectives", multiple=True, metavar="NAME[:max|min]",
              help="Repeatable; two or more make a multi-objective study (no pruning). NAME: a validation metric "
                   f"(val_accuracy, val_loss, ...), {', '.join(KNOWN)} (latency_ms: p50 in onnxruntime; "
                   "throughput: rows/s).")
@click.option("--latency-batch", type=click.IntRange(min=1), help="Rows per timed onnxruntime call (default 1).")
@click.option("--latency-threads", type=click.IntRange(min=1), help="Intra-op threads when timing (default 1).")
@click.option("--provider", type=click.Choice(list(PROVIDERS)), help="Execution provider to time on (default cpu).")
@click.option("--search-quantization", is_flag=True, default=None,
              help="Also search export.quantize in {none, int8}; an int8 trial is scored and timed as int8.")
@click.option("--select", metavar="RULE",
              help="Which Pareto-front model to export: default the best first objective; 'latency_ms<=0.5' "
                   "(constraints joined by ','), or 'knee'.")
@click.option("--heartbeat-interval", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="RDB storages: a running trial records a heartbeat every S seconds (default 30).")
@click.option("--heartbeat-grace", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="RDB storages: a trial without a heartbeat for S seconds is failed and retried (default 120; "
                   "longer than the interval).")
@click.option("--threads", type=click.IntRange(min=1),
              help="onnxruntime intra-op threads when scoring the exported model (default: the CPUs available).")
@click.option("--explain", is_flag=True, default=None,
              help="Explain the exported best model on the test split; log explain/ to the study's parent run.")
@click.option("--explain-rows", type=click.IntRange(min=1), metavar="N", help="Test rows --explain explains (default 100).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (study, best_value, best_params, ...).")
def tune(as_json: bool, quiet: bool, **options: object) -> None:
    """Search hyperparameters with Optuna; one MLflow parent run per study, one child run per trial."""
    from trainforge.cli.quick_exit import standalone
    from trainforge.errors import NoTrialCompleted
    from trainforge.tuning.tune import tune as run_tune

    settings = TuneSettings.resolve(options.pop("config"), quiet=quiet or as_json, **options)
    try:
        result = run_tune(settings, export_worker=standalone())
    except NoTrialCompleted as exc:
        if as_json and exc.result is not None:
            _print_json(exc.result)
        raise
    if as_json:
        _print_json(result)
    else:
        _summary(result)
    if result.interrupted:
        from trainforge import interrupts

        how = interrupts.describe() if interrupts.received() else "interrupted"
        click.echo(f"{how}: finished trials are kept; resume with --study {result.study}", err=True)
        sys.exit(interrupts.exit_code())


def _print_json(result) -> None:
    data = result.to_dict()
    click.echo(json.dumps({**{k: data[k] for k in JSON_KEYS}, **data}, default=str))


def _summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"study {result.study}", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    best = "-" if result.best_value is None else f"{result.best_value:.4f} (trial {result.best_trial})"
    table.add_row(f"best {result.metric}", best)
    for key, value in result.best_params.items():
        table.add_row(f"  {key}", f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("trials", f"{result.n_complete} complete, {result.n_pruned} pruned, {result.n_fail} failed"
                  + (f", {result.n_running} running" if result.n_running else "")
                  + f" ({result.n_trials_run} run now)")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    for entry in result.pareto or []:
        mark = " (selected)" if entry["trial"] == result.selected else ""
        table.add_row(f"front #{entry['trial']}{mark}", "  ".join(f"{k}={v:.4g}" for k, v in entry["values"].items()))
    for key, value in result.test_metrics.items():
        table.add_row(f"exported {key}", f"{value:.4f}")
    table.add_row("parent run", result.parent_run_id)
    if result.onnx_path:
        table.add_row("ONNX model", result.onnx_path)
    if result.model_version:
        table.add_row("registered", f"version {result.model_version}")
    table.add_row("storage", result.storage)
    console.print(table)
    if result.explanation is not None:
        from trainforge.cli.explain import echo_report

        echo_report(result.explanation, "the exported best model")
