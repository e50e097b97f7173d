"""Cross-validation benchmark: K fold models in lockstep (``tune --cv``'s NN trials) vs K sequential single runs.

    python benchmarks/bench_cv.py                         # mlp on digits, 3 folds, 10 epochs, 3 repeats
    python benchmarks/bench_cv.py --folds 5 --epochs 20 --repeats 5
    python benchmarks/bench_cv.py --epochs 3 --repeats 1  # a smoke run

Both arms fit the same K fold bundles (:func:`trainforge.training.folds.load_folds`, loaded once) with the
same config (patience off, so every fold runs every epoch) through :func:`trainforge.run.api.train` (a real
MLflow run per fold, no export):

- ``sequential``: K plain ``train`` calls one after another (what K single runs cost);
- ``lockstep``: :func:`trainforge.cv.lockstep.fit_folds` forced to lockstep (the folds as K greenlets on this
  thread, handing over after every epoch; the mean over folds is reported, and the report here never prunes).

Each fold keeps its own RNG state in lockstep, so both arms must train the same K models: the benchmark checks
that every repeat's fold histories are identical between the arms and says so in the table.

Measured per repeat, the arms interleaved (order rotating): the wall time of the K folds, divided by the epochs
(seconds per epoch of all K folds), and the lockstep / sequential ratio per repeat (paired; median, min-max).
Goal (issue 25): lockstep <= 1.1x the K runs' time. The table goes to stdout and ``benchmarks/RESULTS_cv.md``.
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

from common import Stats, interleave, log, machine, paired_ratios  # noqa: E402

GOAL = 1.1


def contenders(args: argparse.Namespace, fits: dict[str, list[float]], histories: dict[str, list]) -> dict:
    """The two arms as zero-argument callables (each returns the K fold results and appends the sum of the K
    trainers' fit seconds, ``TrainResult.seconds``, to ``fits[arm]`` and the K histories to ``histories[arm]``)."""
    from trainforge.config import resolve
    from trainforge.cv.lockstep import fit_folds
    from trainforge.run.api import train
    from trainforge.training.folds import load_folds

    cfg = resolve({"model": {"name": args.model}, "dataset": {"name": args.dataset},
                   "trainer": {"epochs": args.epochs, "patience": 0, "monitor": "val_accuracy", "device": "cpu"}})
    folds = load_folds(cfg["dataset"], cfg["trainer"], args.folds)

    def train_fold(i, bundle, callbacks):
        return train(cfg, data=bundle, callbacks=callbacks, export=False, quiet=True, run_name=f"bench-fold{i}")

    def sequential():
        results = [train_fold(i, b, []) for i, b in enumerate(folds.bundles)]
        fits.setdefault("sequential", []).append(sum(r.seconds for r in results))
        histories.setdefault("sequential", []).append([r.history for r in results])
        return results

    def lockstep():
        results, mode = fit_folds(train_fold, folds.bundles, "val_accuracy", lambda step, mean: False,
                                  max_bytes=1 << 62)
        assert mode == "lockstep"
        fits.setdefault("lockstep", []).append(sum(r.seconds for r in results))
        histories.setdefault("lockstep", []).append([r.history for r in results])
        return results

    return {"sequential": sequential, "lockstep": lockstep}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS_cv.md")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info, cwd, started = machine(), Path.cwd(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainforge-bench-cv-") as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
        try:
            log(f"{args.folds} folds of {args.model} on {args.dataset}, {args.epochs} epochs, "
                f"{args.repeats} repeats (+1 warm-up) ...")
            fits: dict[str, list[float]] = {}
            histories: dict[str, list] = {}
            times = interleave(contenders(args, fits, histories), args.repeats, warmup=1)
        finally:
            os.chdir(cwd)
    per_epoch = {name: Stats.of([t / args.epochs for t in samples]) for name, samples in times.items()}
    ratio = paired_ratios(times["lockstep"], times["sequential"])
    identical = "yes" if histories["lockstep"] == histories["sequential"] else "NO"  # same seeds, same folds
    verdict = "met" if ratio.median <= GOAL else "**missed**"
    lines = [
        "# Cross-validation benchmark: lockstep folds vs K sequential single runs",
        "",
        f"Command: `python benchmarks/bench_cv.py --model {args.model} --dataset {args.dataset} --folds "
        f"{args.folds} --epochs {args.epochs} --repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads else "") + "`",
        "",
        f"{args.folds} folds of `{args.model}` on {args.dataset}, {args.epochs} epochs each (patience off), one "
        f"MLflow run per fold, no export; torch intra-op threads {torch.get_num_threads()}. Median (min–max) over "
        f"{args.repeats} interleaved repeats; see the script's docstring for the method.",
        "",
        "| arm | wall time of the K folds (s) | seconds per epoch (all K folds) | sum of the K trainers' fit s |",
        "|---|---|---|---|",
        *[f"| {name} | {Stats.of(times[name]).fmt()} | {per_epoch[name].fmt()} | "
          f"{Stats.of(fits[name][1:]).fmt()} |" for name in times],
        "",
        "The wall time holds each run's own costs besides the epochs (MLflow run, artifacts, plots, the test "
        "split). In lockstep each fold's fit seconds include the other folds' epochs (its fit is suspended "
        "while they run), so only the wall time compares the arms.",
        "",
        f"Fold histories identical between the arms in every repeat: **{identical}**.",
        "",
        f"Lockstep / sequential, paired per repeat: **{ratio.fmt()}x** (goal <= {GOAL}x: {verdict}).",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        f"- benchmark wall time: {time.perf_counter() - started:.0f} s",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.write_text(text)
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
