"""``trainforge`` commands. Thin: parse options, call the Python API, print.

Heavy modules (torch, mlflow, onnxruntime) are imported inside the commands, so ``trainforge --help``
and ``trainforge plugins`` start fast. A :class:`trainforge.TrainforgeError` (a user mistake) becomes
one ``Error: ...`` line and exit code 1; usage errors exit 2 (click's conventions).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from trainforge import TrainforgeError, __version__

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"


class Group(click.Group):
    """Turns user errors into one line and a non-zero exit instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrainforgeError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:  # a store that became unwritable mid-command: one line, not a traceback
            from trainforge.errors import environment_fault
            from trainforge.tracking.outcome import failed

            line = environment_fault(exc)
            if line is None:
                raise
            raise click.ClickException(line + failed(exc)) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (trainforge.interrupts): one line, 130 / 143
            from trainforge import interrupts
            from trainforge.tracking.outcome import stopped  # read back from the store: true in every window

            if getattr(exc, "workers_reported", False) or int(os.environ.get("RANK", "0")) > 0:
                ctx.exit(interrupts.exit_code(exc))  # under --nproc N, rank 0 alone speaks for the run
            run_id = getattr(exc, "run_id", None)
            detail = f": {stopped(run_id)}" if run_id else ""
            click.echo(f"Aborted: {interrupts.describe(exc)}{detail}", err=True)
            ctx.exit(interrupts.exit_code(exc))


def _setup_logging(verbose: int) -> None:
    from trainforge.tracking.logs import configure

    configure(verbose)


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=None, default=str))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="trainforge")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Train, tune, track and ship PyTorch models from the command line.

    \b
    Quick start:
      trainforge train --model cnn --dataset digits --epochs 30
      trainforge predict runs:/RUN_ID --input test.csv --output predictions.csv
      trainforge ui
    """
    _setup_logging(verbose)
    if click.get_current_context().invoked_subcommand not in ("ui", "server"):
        from trainforge import interrupts

        interrupts.install()  # SIGTERM (schedulers, docker stop) is handled like Ctrl-C


@cli.command(epilog="""\b
Examples:
  trainforge train --model cnn --dataset digits --epochs 30 --json
  trainforge train --model mlp --dataset csv -p dataset.path=data.csv -p dataset.target=label
  trainforge train --config run.yaml -p model.hidden_sizes=[256,128] -p optimizer.momentum=0.9""")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML file with the config tree.")
@click.option("-p", "--param", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Set any plugin or trainer option; VALUE is YAML. Repeatable.")
@click.option("--model", help="Model plugin (see `trainforge plugins`). Default: mlp.")
@click.option("--dataset", help="Dataset plugin. Default: digits.")
@click.option("--optimizer", help="Optimizer plugin. Default: adam.")
@click.option("--scheduler", help="Learning-rate scheduler plugin: none, step, cosine, plateau.")
@click.option("--epochs", type=click.IntRange(min=1), help="Full passes over the training split (default 50).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Samples per optimizer step (default 64).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate (optimizer.lr).")
@click.option("--seed", type=int, help="Seed for the split, the weights and the shuffling (default 0).")
@click.option("--device", help="auto, cpu, cuda or cuda:N (default auto).")
@click.option("--precision", type=click.Choice(["32", "bf16-mixed", "16-mixed"]), help="Default 32.")
@click.option("--patience", type=click.IntRange(min=0), help="Early-stopping patience in epochs; 0 disables.")
@click.option("--experiment", help="MLflow experiment name (default: trainforge).")
@click.option("--run-name", help="MLflow run name (default: MODEL-DATASET).")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--no-export", "export", is_flag=True, flag_value=False, default=True, help="Skip the ONNX export.")
@click.option("--explain", is_flag=True, help="Explain the exported model on test rows; log explain/ to the run.")
@click.option("--explain-rows", type=click.IntRange(min=1), metavar="N", help="Test rows --explain explains (default 100).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "json", is_flag=True, help="Print one JSON object with run_id, metrics, onnx_path.")
@click.option("--resume", metavar="RUN_ID", help="Continue an interrupted run from its last checkpoint.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, help="Train with DDP in N local processes (torchrun).")
@click.option("--cv", "folds", type=click.IntRange(min=2),
              help="K-fold cross-validation, then a refit on all non-test rows.")
def train(**given: Any) -> None:
    """Train a model, track it in MLflow and export a verified ONNX file."""
    from trainforge.cli.quick_exit import standalone
    from trainforge.run.options import RunOptions

    if given.get("folds"):  # K-fold cross-validation: trainforge.cv.runner
        from trainforge.cli.cv import train_cv

        return train_cv(RunOptions.resolve(**given))

    opts = RunOptions.resolve(**given, export_worker=standalone())  # every option is a RunOptions field
    if opts.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from trainforge.training.distributed import launch

        argv = sys.argv[1:]
        for i, arg in enumerate(argv):  # the same command, minus --nproc, in N processes
            if arg == "--nproc":
                del argv[i:i + 2]
                break
            if arg.startswith("--nproc="):
                del argv[i]
                break
        raise SystemExit(launch(argv, opts.nproc))
    from trainforge.run.api import train as run_train
    from trainforge.training import distributed

    result = run_train(options=opts, on_start=_announce)
    distributed.shutdown()
    if not distributed.is_main():
        return
    if opts.json:
        _print_json(result.to_dict())
        return
    click.echo(f"run {result.run_id}: best epoch {result.best_epoch} of {result.epochs_run} "
               f"({result.seconds:.1f} s of training)")
    for key, value in result.metrics.items():
        click.echo(f"  {key:<16} {value:.4f}")
    if result.onnx_path:
        click.echo(f"ONNX model: {result.onnx_path} "
                   f"(max abs diff vs the trained model: {max(result.parity.values()):.2g})")
    if result.explanation is not None:
        from trainforge.cli.explain import echo_report

        echo_report(result.explanation, "the exported model")


def _announce(run_id: str) -> None:
    click.echo(f"run {run_id} started", err=True)


@cli.command(epilog="""\b
Example:
  trainforge export 3f2a9c... --output digits_cnn.onnx
  trainforge export --study digits --output best.onnx     # the current best trial of a tune study
  trainforge export --study digits --trial 12 -o t12.onnx  # any trial, e.g. a Pareto-front member
  trainforge export 3f2a9c... --part encoder -o encoder.onnx   # an autoencoder's encoder alone
  trainforge export 3f2a9c... -o model.onnx --quantize int8     # also model.int8.onnx""")
@click.argument("run_id", required=False)
@click.option("--study", help="Export the current best trial of this Optuna study instead of RUN_ID.")
@click.option("--trial", type=click.IntRange(min=0), help="With --study: this trial (default: the best, or the "
              "selected Pareto-front trial). An int8 trial also writes OUTPUT.int8.onnx.")
@click.option("--storage", help="Optuna storage of --study (default: mlruns/optuna/journal.log).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Where to write (default ./RUN_ID.onnx).")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--log-to-run", is_flag=True, help="Also log the file to the run as onnx/model.onnx.")
@click.option("--part", help="Export only this part of the model, e.g. encoder (autoencoders).")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Also write an int8 copy (OUTPUT.int8.onnx): dynamic for MLP/RNN, static QDQ calibrated on "
                   "the training split for CNNs; prints the test accuracy of both.")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export(run_id: str | None, study: str | None, trial: int | None, storage: str | None, output: str | None,
           opset: int | None, log_to_run: bool, part: str | None, quantize: str | None, tracking_uri: str | None,
           as_json: bool) -> None:
    """Re-export a run's best checkpoint to ONNX, checked against torch on its test split."""
    from trainforge.exporting.exporter import export as run_export

    if (run_id is None) == (study is None):
        raise click.UsageError("give a RUN_ID or --study NAME (one of them)")
    if trial is not None and not study:
        raise click.UsageError("--trial needs --study")
    quantized = None
    if study:
        from trainforge.tuning.best_model import export_study_trial

        report, quantized = export_study_trial(study, trial, output, storage=storage, tracking_uri=tracking_uri,
                                               opset=opset, log_to_run=log_to_run, quantize=quantize)
    else:
        report = run_export(run_id, output, tracking_uri=tracking_uri, opset=opset, log_to_run=log_to_run,
                            part=part)
    if quantize and quantized is None:
        from trainforge.exporting.quantize import quantize_run

        source_run = report.metadata.get("mlflow_run_id") or run_id
        quantized = quantize_run(source_run, report.path, tracking_uri=tracking_uri)
    if as_json:
        _print_json({**report.to_dict(), **({"quantized": quantized.to_dict()} if quantized else {})})
        return
    diffs = ", ".join(f"batch {k}: {v:.2g}" for k, v in report.max_abs_diff.items())
    click.echo(f"wrote {report.path} (opset {report.opset}; max abs diff vs the trained model: {diffs})")
    if quantized:
        m = quantized.metrics
        change = (f"; test accuracy {m['fp32_accuracy']:.4f} -> {m['int8_accuracy']:.4f} "
                  f"({m['accuracy_change_points']:+.2f} points)" if "accuracy_change_points" in m else "")
        click.echo(f"wrote {quantized.path} (int8, {quantized.method}, {quantized.bytes_fp32 // 1024} KiB -> "
                   f"{quantized.bytes_int8 // 1024} KiB{change})")


@cli.command(epilog="""\b
Examples:
  trainforge predict runs:/3f2a9c... --input test.csv --output predictions.csv --target target
  trainforge predict models:/digits-cnn/3 --input test.csv      # or models:/digits-cnn@champion
  trainforge predict model.onnx --input images.npy --provider cpu""")
@click.argument("model")
@click.option("--input", "-i", "input_path", required=True, type=click.Path(dir_okay=False),
              help="CSV (header row), .npy or Parquet file of feature rows.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="CSV to write (default: stdout).")
@click.option("--target", help="Column with true values: report accuracy or MSE/MAE.")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="Execution provider; auto takes CUDA only when it can really run.")
@click.option("--no-fallback", is_flag=True, help="Fail instead of falling back from CUDA to CPU.")
@click.option("--threads", type=click.IntRange(min=1),
              help="onnxruntime intra-op threads (default: the CPUs this process may use).")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (rows, provider, metrics).")
def predict(model: str, input_path: str, output: str | None, target: str | None, provider: str,
            no_fallback: bool, threads: int | None, tracking_uri: str | None, as_json: bool) -> None:
    """Predict with an ONNX model (a .onnx path, runs:/RUN_ID or models:/NAME/VERSION) using onnxruntime.

    A model from the store is checked against the SHA-256 its run recorded at export; a mismatch is refused.
    """
    from trainforge.atomic import check_not_input
    from trainforge.exporting.predictor import predict as run_predict

    check_not_input(output, input_path, model)
    result = run_predict(model, input_path, output, target=target, provider=provider,
                         allow_fallback=not no_fallback, tracking_uri=tracking_uri, threads=threads)
    if result.predictions is not None and not as_json:
        click.echo(result.predictions.to_csv(index=False), nl=False)
    summary = click.echo if output or as_json else (lambda m: click.echo(m, err=True))
    if as_json:
        _print_json(result.to_dict())
        return
    summary(f"{result.rows} rows predicted on {result.provider}" + (f" -> {output}" if output else ""))
    for key, value in result.metrics.items():
        summary(f"{key}: {value:.4f}")


@cli.command(epilog="""\b
Examples:
  trainforge plugins
  trainforge plugins --json""")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def plugins(as_json: bool) -> None:
    """List the plugins and where they come from (each name is also DISTRIBUTION:NAME, e.g. trainforge:mlp)."""
    from trainforge import manager

    rows = [{"kind": e.plugin_type, "name": e.name, "qualified_name": e.qualified_name, "status": e.status,
             "shadowed_by": e.shadowed_by, "description": e.spec.description,
             "distribution": e.distribution, "version": e.version, "plugin": e.plugin,
             "defaults": e.spec.defaults, "tunable": e.spec.search_space is not None,
             **({"tasks": sorted(e.spec.tasks)} if hasattr(e.spec, "tasks") else {})}
            for e in manager.entries()]
    problems = manager.problems()
    rows += [{"kind": "problem", "name": p.plugin, "status": p.status, "description": p.reason,
              "distribution": p.distribution, "version": p.version, "plugin": p.plugin} for p in problems]
    if as_json:
        _print_json(rows)
        return
    rows = [r for r in rows if r["kind"] != "problem"]
    width = max(len(r["name"]) for r in rows)
    kind = None
    for r in rows:
        if r["kind"] != kind:
            kind = r["kind"]
            click.echo(f"{kind}s:")
        origin = f"{r['distribution']} {r['version']}".strip()
        state = {"shadowed": f"  SHADOWED by {r['shadowed_by']}", "ambiguous": "  AMBIGUOUS"}.get(r["status"], "")
        click.echo(f"  {r['name']:<{width}}  {r['description']}  [{origin}]{state}")
    labels = {"broken": "BROKEN (skipped)", "empty": "WARNING (registers nothing)"}
    if problems:
        click.echo("plugin problems (block one with TRAINFORGE_BLOCK_PLUGINS=DISTRIBUTION):")
    for p in problems:
        click.echo(f"  {p.plugin} [{p.distribution} {p.version}]: {labels[p.status]}: {p.reason}")


@cli.command(epilog="""\b
Examples:
  trainforge data --run 3f2a9c... --split test --output test.csv
  trainforge data --dataset wine --split test --output wine_test.parquet""")
@click.option("--run", "run_id", help="Re-create the split of this run (the dataset, seed and fractions its "
              "checkpoint carries).")
@click.option("--dataset", help="Dataset plugin (with -p dataset.KEY=VALUE and trainer.seed).")
@click.option("-p", "--param", "params", multiple=True, metavar="SECTION.KEY=VALUE")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help=".csv or .parquet")
@click.option("--tracking-uri", help=TRACKING_HELP)
def data(run_id: str | None, dataset: str | None, params: tuple[str, ...], split: str, output: str,
         tracking_uri: str | None) -> None:
    """Write a split of a dataset (raw features plus a `target` column) to CSV or Parquet."""
    from trainforge.atomic import check_not_input
    from trainforge.run.api import build_config
    from trainforge.training import data as data_mod

    if run_id:
        from trainforge.tracking import store as tracking
        from trainforge.tracking.runconfig import run_config

        tracking.setup_uri(tracking_uri)
        cfg = build_config(run_config(run_id), params)
    else:
        cfg = build_config({"dataset": {"name": dataset}} if dataset else None, params)
    check_not_input(output, cfg["dataset"].get("path"))
    bundle = data_mod.load(cfg["dataset"], cfg["trainer"])
    n = data_mod.write_split(bundle, split, output)
    click.echo(f"wrote {n} {split} rows of {cfg['dataset']['name']} to {output}")


@cli.command(epilog="""\b
Examples:
  trainforge ui                 # prints http://127.0.0.1:5000/#/experiments/<id>/runs?... once it answers
  trainforge ui --port 5001 --experiment my-study""")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default).")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--experiment", help="Experiment whose runs the printed link opens (default: $MLFLOW_EXPERIMENT_NAME, "
                                   "else trainforge).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server worker processes (one is plenty for one person; mlflow's own default is 4).")
def ui(port: int, host: str, tracking_uri: str | None, experiment: str | None, workers: int) -> None:
    """Open the MLflow UI on the local store; prints a link to the experiment's runs table once it answers.

    A port already in use is an error (exit 1). A ``--host`` other than loopback gets a warning on stderr
    (and MLflow admits only Host headers naming this machine). SIGTERM or Ctrl-C stops the whole server. MLflow's job
    runner stays off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` says otherwise.
    """
    from pathlib import Path

    from trainforge.cli.server import LOOPBACK, check_port, host_patterns, supervise, ui_ready, warn_exposed
    from trainforge.tracking.store import ARTIFACT_ROOT
    from trainforge.tracking.store import tracking_uri as resolve_uri

    check_port(host, port)
    uri = resolve_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not uri.endswith(":memory:"):  # a SQLite file: create its folder
        Path(uri[len("sqlite:///"):].partition("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--default-artifact-root", str(Path.cwd() / ARTIFACT_ROOT), "--workers", str(workers)]
    if host not in LOOPBACK:  # MLflow's Host-header check: this machine's names, not "*"
        warn_exposed(host, "MLflow's UI has no authentication (for a team, use `trainforge server --basic-auth`)")
        cmd += ["--allowed-hosts", ",".join(host_patterns(host, port))]
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "trainforge"
    click.echo(f"starting the MLflow UI for {uri} ...", err=True)
    # MLflow's job runner (GenAI evaluation and prompt jobs: 8 huey processes) serves no training run
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    raise SystemExit(supervise(cmd, host, port, lambda: ui_ready(host, port, name), env=env))


from trainforge.cli.server import server  # noqa: E402  (click only: keeps start-up light)

cli.add_command(server)
from trainforge.cli.tune import tune  # noqa: E402  (click only; optuna loads inside the command)

cli.add_command(tune)
from trainforge.cli.compare import compare  # noqa: E402  (click only; torch, mlflow load inside)
from trainforge.cli.doctor import doctor  # noqa: E402  (click only; torch, onnxruntime, mlflow load inside)
from trainforge.cli.explain import explain  # noqa: E402  (click only; shap, captum, torch load inside)
from trainforge.cli.runs import runs  # noqa: E402  (click only)

for _command in (doctor, runs, compare, explain):
    cli.add_command(_command)


def main() -> None:
    from trainforge.cli.quick_exit import run

    run(lambda: cli(prog_name="trainforge"))  # skips the interpreter's teardown (see quick_exit)


if __name__ == "__main__":
    main()
