"""What a whole ``trainforge train`` process costs beyond its training, against a plain script.

1. Whole run: ``trainforge train --model mlp --dataset iris --epochs 5`` (tracking in a new SQLite store,
   plots, checkpoint, verified ONNX export, MLflow models) vs ``benchmarks/plain_train.py --export`` (the
   same data, split, model, optimizer and epochs, ``torch.onnx.export(dynamo=True)`` and one onnxruntime
   check, nothing tracked). Wall time of each process, the two interleaved in pairs.
2. Per epoch, as a whole process: the digits MLP 64-256-256-10, 60/20/20 split, no early stopping,
   ``--no-export``, at 5 and 85 epochs, vs ``plain_train.py`` (a DataLoader loop with a validation pass
   per epoch). Per-epoch cost = (time at 85 - time at 5) / 80, wall and CPU, so start-up cancels; the
   four processes of one repeat run back to back, the order rotating.

The machine may be shared: the load average is reported with the figures.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
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


def _run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` to completion; returns its CPU seconds (user + system, all its threads and children)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    env["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    env.update(extra_env or {})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


IRIS_RUN = ["train", "--model", "mlp", "--dataset", "iris", "--epochs", "5", "--quiet"]


def whole_run(section: Section, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        counter = [0]

        def trainforge(cold: bool = False) -> None:  # a new working directory each time: a new store
            counter[0] += 1
            cwd = Path(tmp) / f"tf{counter[0]}"
            cwd.mkdir()
            # cold: no schema template for new stores yet (trainforge.tracking.schema), as on a machine's
            # first run with this MLflow version; warm: every later new store
            env = {"TRAINFORGE_CACHE_DIR": str(cwd / "cache")} if cold else {}
            _run([*_exe(), *IRIS_RUN], cwd, env)

        load_before = _load()
        times = interleave({"trainforge train": trainforge,
                            "plain script": lambda: _run([*PLAIN, "--dataset", "iris", "--epochs", "5", "--export"],
                                                         Path(tmp)),
                            "trainforge train, cold": lambda: trainforge(cold=True)}, repeats)
    tf, plain = Stats.of(times["trainforge train"]), Stats.of(times["plain script"])
    cold = Stats.of(times["trainforge train, cold"])
    ratio = paired_ratios(times["trainforge train"], times["plain script"])
    cold_ratio = paired_ratios(times["trainforge train, cold"], times["plain script"])
    section.add("### Whole run: `trainforge train --model mlp --dataset iris --epochs 5` vs a plain script", "",
                f"Wall seconds of each process, {repeats} interleaved rounds (load average before: {load_before}; "
                f"after: {_load()}). Every trainforge run starts in a new folder, so it creates a new store. The "
                "first new store on a machine (per MLflow version) also builds the schema template that later "
                "ones copy: the *cold* row.", "")
    section.table(["process", "wall s", "ratio (paired)"],
                  [["`trainforge train` (new store, plots, checkpoint, verified ONNX, MLflow models)", tf.fmt(),
                    ratio.fmt()],
                   ["`trainforge train`, cold: the machine's first store (schema template built)", cold.fmt(),
                    cold_ratio.fmt()],
                   ["`plain_train.py --export` (DataLoader loop, dynamo export, one onnxruntime check)", plain.fmt(),
                    "1"]])
    section.checks.append(Check("whole run vs plain script with the same export (ratio of medians)",
                                tf.median / plain.median, 1.25,
                                note=f"paired min {ratio.min:.2f}, max {ratio.max:.2f}; cold "
                                     f"{cold.median / plain.median:.2f}"))


def per_epoch(section: Section, repeats: int, short: int = 5, long: int = 85) -> None:
    cpu: dict[str, list[float]] = {}

    def timed(name: str, cmd: list[str], cwd: Path) -> Callable[[], None]:
        return lambda: cpu.setdefault(name, []).append(_run(cmd, cwd))

    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        cwd = Path(tmp)
        contenders = {
            f"trainforge {n}": timed(f"trainforge {n}", [*_exe(), "train", *DIGITS, "--epochs", str(n)], cwd)
            for n in (short, long)
        } | {
            f"plain {n}": timed(f"plain {n}", [*PLAIN, *PLAIN_DIGITS, "--epochs", str(n)], cwd) for n in (short, long)
        }
        load_before = _load()
        times = interleave(contenders, repeats, warmup=0)  # start-up cancels in the difference
    span = long - short

    def per(series: dict[str, list[float]], who: str) -> list[float]:
        return [(b - a) / span for a, b in zip(series[f"{who} {short}"], series[f"{who} {long}"], strict=True)]

    tf, plain = Stats.of(per(times, "trainforge")), Stats.of(per(times, "plain"))
    tf_cpu, plain_cpu = Stats.of(per(cpu, "trainforge")), Stats.of(per(cpu, "plain"))
    ratio = paired_ratios(per(times, "trainforge"), per(times, "plain"))
    cpu_ratio = paired_ratios(per(cpu, "trainforge"), per(cpu, "plain"))
    section.add("### Per epoch, as a whole process: digits MLP 64-256-256-10, 60/20/20, no early stopping", "",
                f"(time at {long} epochs - time at {short}) / {span}, milliseconds per epoch, wall and CPU (user + "
                f"system, all threads); {repeats} repeats of the four processes, order rotating (load average "
                f"before: {load_before}; after: {_load()}). The span of {span} epochs keeps start-up noise small "
                "against the difference.", "")
    section.table(["process", "wall ms per epoch", "ratio (paired)", "CPU ms per epoch", "ratio (paired)"],
                  [["`trainforge train ... --no-export`", tf.fmt(scale=1000), ratio.fmt(),
                    tf_cpu.fmt(scale=1000), cpu_ratio.fmt()],
                   ["`plain_train.py` (DataLoader loop + validation pass)", plain.fmt(scale=1000), "1",
                    plain_cpu.fmt(scale=1000), "1"]])
    section.checks.append(Check("whole-process per-epoch cost, digits MLP vs plain loop (ratio of medians)",
                                tf.median / plain.median, 1.05,
                                note=f"paired min {ratio.min:.2f}, max {ratio.max:.2f}; CPU time "
                                     f"{tf_cpu.median / plain_cpu.median:.2f}"))


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
