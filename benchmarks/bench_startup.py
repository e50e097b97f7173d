"""Start-up: wall time of light ``trainforge`` commands, and which heavy packages they import.

Each command runs as a subprocess of the installed console script (what a user types), interleaved with
two baselines: the bare interpreter (``python -c pass``, the floor) and ``python -c "import torch"``
(what every command would cost if the CLI imported torch at the top). Heavy imports are detected with
``PYTHONPROFILEIMPORTTIME=1`` (the environment form of ``python -X importtime``): a package counts as
imported when its top-level module appears in the import log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common import Check, Section, Stats, interleave, log

HEAVY = ("torch", "mlflow", "optuna", "onnxruntime", "onnx", "pandas", "sklearn", "lightning")
COMMANDS = {"trainforge --help": ["--help"], "trainforge plugins": ["plugins"],
            "trainforge predict --help": ["predict", "--help"]}


def _exe() -> list[str]:
    script = Path(sys.executable).parent / "trainforge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainforge.cli.main"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    env["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    return env


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")


def imported(cmd: list[str]) -> tuple[set[str], float]:
    """Top-level packages ``cmd`` imports and the total import time in seconds (from the import log)."""
    env = {**_env(), "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    names, total = set(), 0
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:"):].split("|")
        if len(parts) < 3 or not parts[0].strip().isdigit():
            continue
        name = parts[2].strip()
        names.add(name.split(".")[0])
        if not parts[2].startswith("  "):  # top level of the import tree: its cumulative time counts once
            total += int(parts[1])
    return names, total / 1e6


def run(repeats: int = 7) -> Section:
    section = Section("Start-up: light commands stay light")
    exe = _exe()
    contenders = {label: (lambda args=args: _run(exe + args)) for label, args in COMMANDS.items()}
    contenders["python -c pass (floor)"] = lambda: _run([sys.executable, "-c", "pass"])
    contenders['python -c "import torch"'] = lambda: _run([sys.executable, "-c", "import torch"])
    log(f"[startup] {len(contenders)} commands x {repeats} repeats")
    times = interleave(contenders, repeats)
    rows = []
    for label, samples in times.items():
        stats = Stats.of(samples)
        if label.startswith("trainforge"):
            names, import_s = imported(exe + COMMANDS[label])
            heavy = sorted(n for n in HEAVY if n in names)
            heavy_txt = ", ".join(heavy) if heavy else "none"
        else:
            import_s, heavy_txt = float("nan"), "—"
        rows.append([f"`{label}`", stats.fmt(), f"{import_s:.3f}" if import_s == import_s else "—", heavy_txt])
        if label.startswith("trainforge"):
            bad = [n for n in ("torch", "mlflow", "optuna") if n in heavy]
            section.checks.append(Check(f"`{label}` imports none of torch/mlflow/optuna", float(len(bad)), 0,
                                        note=", ".join(bad) if bad else "none imported"))
    section.add(
        f"Wall time of the installed console script as a subprocess, {repeats} interleaved repeats "
        "(seconds, median (min–max)); import time and heavy packages from `PYTHONPROFILEIMPORTTIME=1`.", "")
    section.table(["command", "wall s", "import time s", f"heavy packages imported (of {', '.join(HEAVY)})"], rows)
    help_s = Stats.of(times["trainforge --help"])
    section.checks.insert(0, Check("`trainforge --help` wall time (s)", help_s.median, 0.5,
                                   note=f"min {help_s.min:.3f}, max {help_s.max:.3f}"))
    return section


if __name__ == "__main__":
    print(run(repeats=5).markdown())
