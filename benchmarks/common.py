"""Shared helpers: repeat-and-interleave timing, summary statistics, the machine description, Markdown.

Every benchmark times trainforge and its baseline *in the same process run*, interleaved repeat by
repeat (the order rotates each repeat), so a noisy neighbour slows both sides alike. Ratios are formed
per repeat (paired) and summarised as median with min and max.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stats:
    """Median, min and max of repeated measurements (``n`` samples)."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        if not samples:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        """``median (min–max)``, each scaled by ``scale`` and shown to about ``digits`` significant digits."""
        return f"{num(self.median * scale, digits)} ({num(self.min * scale, digits)}–{num(self.max * scale, digits)})"


def num(value: float, digits: int = 3) -> str:
    """A readable number: ``12,345``, ``123``, ``12.3``, ``1.23``, ``0.0123`` (no exponent above 1)."""
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        decimals = max(0, digits - len(str(int(abs(value)))))
        return f"{value:.{decimals}f}"
    return f"{value:.{digits}g}"


def paired_ratios(a: list[float], b: list[float]) -> Stats:
    """Statistics of ``a[i] / b[i]`` over repeats measured side by side."""
    return Stats.of([x / y for x, y in zip(a, b, strict=True) if y > 0])


def interleave(contenders: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
               measure: Callable[[Any, float], float] | None = None) -> dict[str, list[float]]:
    """Run every contender ``warmup`` times (discarded), then ``repeats`` rounds, order rotating per round.

    Each call's value is its wall time in seconds, or ``measure(return_value, seconds)`` when given.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            started = time.perf_counter()
            value = contenders[name]()
            seconds = time.perf_counter() - started
            out[name].append(measure(value, seconds) if measure else seconds)
    return out


@dataclass
class Check:
    """One 'done when' target: ``value`` compared with ``target`` (``<=`` or ``>=``)."""

    name: str
    value: float
    target: float
    op: str = "<="
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    def row(self) -> str:
        mark = "met" if self.ok else "**missed**"
        return f"| {self.name} | {self.value:.3g} | {self.op} {self.target:g} | {mark} | {self.note} |"


@dataclass
class Section:
    """One benchmark's Markdown section and its target checks."""

    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self.lines.append("| " + " | ".join(str(c) for c in row) + " |")
        self.lines.append("")

    def markdown(self) -> str:
        return f"## {self.title}\n\n" + "\n".join(self.lines).rstrip() + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, str]:
    """CPU model, cores, memory, OS, Python and library versions, the date and the code's git commit."""
    physical = logical = os.cpu_count() or 1
    memory = ""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
        memory = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    ort = _version("onnxruntime-gpu")
    if ort == "not installed":
        ort = _version("onnxruntime")
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--", "core", "plugins", "cli") else ""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cores": f"{physical} physical / {logical} logical",
        "memory": memory or "n/a",
        "gpu": _gpu(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": ort,
        "mlflow": _version("mlflow"),
        "lightning": _version("lightning"),
        "trainforge commit": (commit or "unknown") + dirty,
        "load average at start (1/5/15 min)": load,
    }


def _gpu() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "none"
    except (OSError, subprocess.SubprocessError):
        return "none"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
