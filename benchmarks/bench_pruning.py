"""Pruning benchmark: the same study with the median pruner and without pruning, on digits.

    python benchmarks/bench_pruning.py                          # mlp, 30 trials, 40 epochs max (~10 min on 2 cores)
    python benchmarks/bench_pruning.py --model cnn --n-trials 30 --epochs 50
    python benchmarks/bench_pruning.py --n-trials 8 --epochs 15 # a smoke run

Both arms run ``trainforge.tuning.tune.tune`` with the same TPE sampler seed, the same trial count, the same
search space, data split and epoch budget per trial (early stopping stays on, as in a normal ``tune``).
Only the pruner differs: ``median`` (MedianPruner, 4 startup trials, 3 warm-up epochs) vs ``none``.
The sampler sees the pruned trials, so after its startup trials the two arms sample different points:
the comparison is of two whole studies, as a user would run them, not of identical trial sequences.

Recorded per arm: total epochs trained (sum over trials of the epochs each ran, read back from Optuna),
trials pruned, wall time of the whole study (trials and their MLflow runs; no export), best validation
accuracy. Everything runs in a temporary directory (its own journal storage and MLflow store); the
table goes to stdout and to ``benchmarks/RESULTS_pruning.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import log, machine  # noqa: E402

from trainforge.tuning.settings import TUNE_VAL_FRACTION  # noqa: E402


def run_arm(pruner: str, args: argparse.Namespace) -> dict:
    """One study; returns its figures (epochs, pruned, seconds, best value, per-trial epochs)."""
    import optuna

    from trainforge.tuning.study import open_storage
    from trainforge.tuning.tune import tune

    started = time.perf_counter()
    result = tune(models=args.model, dataset="digits", n_trials=args.n_trials, epochs=args.epochs,
                  overrides=[f"trainer.patience={args.patience}"], sampler="tpe", seed=args.seed, pruner=pruner,
                  study=f"bench-{pruner}", export=False, quiet=True)
    seconds = time.perf_counter() - started
    study = optuna.load_study(study_name=f"bench-{pruner}", storage=open_storage(None))
    epochs = [int(t.user_attrs.get("epochs_run", len(t.intermediate_values))) for t in study.trials]
    return {"pruner": pruner, "epochs": sum(epochs), "per_trial": epochs, "pruned": result.n_pruned,
            "complete": result.n_complete, "failed": result.n_fail, "seconds": seconds,
            "best": result.best_value, "best_params": result.best_params}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp", help="model plugin (default mlp)")
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=40, help="maximum epochs per trial")
    parser.add_argument("--patience", type=int, default=10, help="early-stopping patience (0 disables)")
    parser.add_argument("--seed", type=int, default=0, help="TPE sampler seed (both arms)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS_pruning.md")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("mlflow", "alembic", "optuna"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    info = machine()
    cwd = Path.cwd()
    rows = []
    with tempfile.TemporaryDirectory(prefix="trainforge-bench-pruning-") as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
        try:
            for pruner in ("none", "median"):
                log(f"study with pruner={pruner}: {args.n_trials} trials of {args.model} on digits ...")
                rows.append(run_arm(pruner, args))
                log(f"  {rows[-1]['epochs']} epochs, {rows[-1]['pruned']} pruned, {rows[-1]['seconds']:.0f} s")
        finally:
            os.chdir(cwd)

    none, median = rows
    saved = none["epochs"] - median["epochs"]
    table = ["| pruner | trials (complete / pruned / failed) | total epochs trained | wall time (s) | best val accuracy |",
             "|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['pruner']} | {args.n_trials} ({r['complete']} / {r['pruned']} / {r['failed']}) | "
                     f"{r['epochs']} | {r['seconds']:.0f} | {r['best']:.4f} |")
    lines = [
        "# Pruning benchmark: median pruner vs none",
        "",
        f"Command: `python benchmarks/bench_pruning.py --model {args.model} --n-trials {args.n_trials} "
        f"--epochs {args.epochs} --patience {args.patience} --seed {args.seed}`",
        "",
        f"Digits (sklearn, 8x8), model `{args.model}`, TPE sampler seed {args.seed} in both arms, up to "
        f"{args.epochs} epochs per trial, early-stopping patience {args.patience}, metric val_accuracy "
        f"(validation split: {TUNE_VAL_FRACTION:.0%} of the 1797 images, tune's default). See the script's "
        "docstring for the method.",
        "",
        *table,
        "",
        f"Pruning saved **{saved} epochs** ({saved / max(none['epochs'], 1):.0%} of the unpruned study's) and "
        f"{none['seconds'] - median['seconds']:.0f} s of wall time; best value "
        f"{median['best']:.4f} with pruning vs {none['best']:.4f} without.",
        "",
        "Epochs per trial (trial order):",
        "",
        *[f"- {r['pruner']}: {r['per_trial']}" for r in rows],
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.write_text(text)
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
