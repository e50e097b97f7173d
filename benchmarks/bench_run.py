"""What a whole ``trainforge train`` process costs beyond its training, against a plain script.

1. Whole run: ``trainforge train --model mlp --dataset iris --epochs 5`` (tracking in a new SQLite store,
   plots, checkpoint, verified ONNX export, MLflow models) vs ``benchmarks/plain_train.py --export`` (the
   same data, split, model, optimizer and epochs, ``torch.onnx.export(dynamo=True)`` and one onnxruntime
   check, nothing tracked). Wall time of each process, the two interleaved in pairs.
2. Per epoch, as a whole process: the digits MLP 64-256-256-10, 60/20/20 split, no early stopping,
   ``--no-export``, at 5 and 45 epochs, vs ``plain_train.py`` (a DataLoader loop with a validation pass
   per epoch). Per-epoch cost = (wall at 45 - wall at 5) / 40, so start-up cancels; the four processes of
   one repeat run back to back, the order rotating.

The machine may be shared: the load average is reported with the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Check, Section, Stats, interleave, log, paired_ratios

HERE = Path(__file__).resolve().parent
PLAIN = [sys.executable, str(HERE / "plain_train.py")]
DIGITS = ["--model", "mlp", "--dataset", "digits", "-p", "model.hidden_sizes=[256,256]",
          "-p", "trainer.val_fraction=0.2", "-p", "trainer.test_fraction=0.2", "-p", "trainer.patience=0",
          "--no-export", "--quiet"]
PLAIN_DIGITS = ["--dataset", "digits", "--hidden", "256", "256", "--val", "0.2", "--test", "0.2"]


def _exe() -> list[str]:
    script = Path(sys.executable).parent / "trainforge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainforge.cli.main"]


def _run(cmd: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    env["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def whole_run(section: Section, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        counter = [0]

        def trainforge() -> None:  # a new working directory each time: a first run, new store included
            counter[0] += 1
            cwd = Path(tmp) / f"tf{counter[0]}"
            cwd.mkdir()
            _run([*_exe(), "train", "--model", "mlp", "--dataset", "iris", "--epochs", "5", "--quiet"], cwd)

        load_before = _load()
        times = interleave({"trainforge train": trainforge,
                            "plain script": lambda: _run([*PLAIN, "--dataset", "iris", "--epochs", "5", "--export"],
                                                         Path(tmp))}, repeats)
    tf, plain = Stats.of(times["trainforge train"]), Stats.of(times["plain script"])
    ratio = paired_ratios(times["trainforge train"], times["plain script"])
    section.add("### Whole run: `trainforge train --model mlp --dataset iris --epochs 5` vs a plain script", "",
                f"Wall seconds of each process, {repeats} interleaved pairs (load average before: {load_before}; "
                f"after: {_load()}).", "")
    section.table(["process", "wall s", "ratio (paired)"],
                  [["`trainforge train` (new store, plots, checkpoint, verified ONNX, MLflow models)", tf.fmt(),
                    ratio.fmt()],
                   ["`plain_train.py --export` (DataLoader loop, dynamo export, one onnxruntime check)", plain.fmt(),
                    "1"]])
    section.checks.append(Check("whole run vs plain script with the same export (ratio of medians)",
                                tf.median / plain.median, 1.25,
                                note=f"paired min {ratio.min:.2f}, max {ratio.max:.2f}"))


def per_epoch(section: Section, repeats: int, short: int = 5, long: int = 45) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        cwd = Path(tmp)
        contenders = {
            f"trainforge {short}": lambda: _run([*_exe(), "train", *DIGITS, "--epochs", str(short)], cwd),
            f"trainforge {long}": lambda: _run([*_exe(), "train", *DIGITS, "--epochs", str(long)], cwd),
            f"plain {short}": lambda: _run([*PLAIN, *PLAIN_DIGITS, "--epochs", str(short)], cwd),
            f"plain {long}": lambda: _run([*PLAIN, *PLAIN_DIGITS, "--epochs", str(long)], cwd),
        }
        load_before = _load()
        times = interleave(contenders, repeats, warmup=0)  # start-up cancels in the difference
    span = long - short
    tf = [(b - a) / span for a, b in zip(times[f"trainforge {short}"], times[f"trainforge {long}"], strict=True)]
    plain = [(b - a) / span for a, b in zip(times[f"plain {short}"], times[f"plain {long}"], strict=True)]
    tf_s, plain_s = Stats.of(tf), Stats.of(plain)
    ratio = paired_ratios(tf, plain)
    section.add("### Per epoch, as a whole process: digits MLP 64-256-256-10, 60/20/20, no early stopping", "",
                f"(wall at {long} epochs - wall at {short}) / {span}, milliseconds per epoch; {repeats} repeats "
                f"of the four processes (load average before: {load_before}; after: {_load()}).", "")
    section.table(["process", "ms per epoch", "ratio (paired)"],
                  [["`trainforge train ... --no-export`", tf_s.fmt(scale=1000), ratio.fmt()],
                   ["`plain_train.py` (DataLoader loop + validation pass)", plain_s.fmt(scale=1000), "1"]])
    section.checks.append(Check("whole-process per-epoch cost, digits MLP vs plain loop (ratio of medians)",
                                tf_s.median / plain_s.median, 1.05,
                                note=f"paired min {ratio.min:.2f}, max {ratio.max:.2f}"))


def run(repeats: int = 5) -> Section:
    section = Section("Whole runs: what a run costs beyond its training")
    log(f"[run] whole run, {repeats} pairs")
    whole_run(section, repeats)
    log(section.markdown())  # the figures so far, should the rest be interrupted
    log(f"[run] per epoch, {repeats} repeats x 4 processes")
    per_epoch(section, repeats)
    return section


if __name__ == "__main__":
    print(run(repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 3).markdown())
