"""Predict throughput and memory: ``trainforge predict`` on generated 100k- and 1M-row CSV files.

The model is the digits MLP (trained here for a few epochs and exported by ``trainforge.train``; the
weights do not change the cost). The CSV has the 64 named pixel columns of digits (integers 0-16, rows
drawn from the real test split). Each run is the installed console script
``trainforge predict MODEL --input FILE --output OUT --provider cpu`` as a subprocess of a small
wrapper process that reports the child's exact peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``,
the kernel's high-water mark, not a sample). Rows/s counts the whole command (start-up included); the
steady-state rate is the slope between the two file sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import Check, Section, Stats, interleave, log

WRAPPER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
seconds = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "seconds": seconds, "maxrss_kib": usage.ru_maxrss,
                  "stderr": proc.stderr[-2000:]}))
"""


def make_csv(path: Path, rows: int, block: int = 100_000, seed: int = 0) -> int:
    """Write ``rows`` digits-like rows (64 named integer columns) to ``path``; returns the file size."""
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    rng = np.random.default_rng(seed)
    chunk = digits.data.astype(np.int64)[rng.integers(0, len(digits.data), size=min(block, rows))]
    text = pd.DataFrame(chunk, columns=names).to_csv(index=False, header=False)
    with open(path, "w") as fh:
        fh.write(",".join(names) + "\n")
        full, rest = divmod(rows, len(chunk))
        for _ in range(full):
            fh.write(text)
        if rest:
            fh.write("".join(text.splitlines(keepends=True)[:rest]))
    return path.stat().st_size


def _model(workdir: Path) -> str:
    from trainforge.run.api import train

    result = train(model__name="mlp", dataset__name="digits", trainer__epochs=3, trainer__patience=0,
                   trainer__device="cpu", experiment="bench-predict", quiet=True)
    return str(result.onnx_path)


def _predict(model: str, csv: Path, out: Path) -> dict:
    exe = Path(sys.executable).parent / "trainforge"
    cmd = [sys.executable, "-c", WRAPPER, str(exe), "predict", model, "--input", str(csv), "--output", str(out),
           "--provider", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"trainforge predict failed ({result['rc']}): {result['stderr']}")
    lines = sum(1 for _ in open(out)) - 1
    if lines != int(csv.stem.split("_")[-1]):
        raise RuntimeError(f"{out}: {lines} predictions for {csv.name}")
    out.unlink()
    return result


def run(repeats: int = 5, sizes: tuple[int, int] = (100_000, 1_000_000), workdir: Path | None = None) -> Section:
    import tempfile

    section = Section(f"Predict throughput and memory: {sizes[0]:,} vs {sizes[1]:,} rows")
    with tempfile.TemporaryDirectory(prefix="trainforge-bench-predict-", dir=workdir) as tmp:
        tmp_path = Path(tmp)
        log("[predict] training a small MLP to predict with")
        model = _model(tmp_path)
        files = {}
        for n in sizes:
            path = tmp_path / f"digits_{n}.csv"
            size = make_csv(path, n)
            files[n] = path
            log(f"[predict] wrote {path.name} ({size / 2**20:.0f} MiB)")
        contenders = {n: (lambda path=path: _predict(model, path, tmp_path / f"out_{path.stem}.csv"))
                      for n, path in files.items()}
        log(f"[predict] {len(sizes)} files x {repeats} repeats")
        res = interleave(contenders, repeats, warmup=0, measure=lambda value, _s: value)
        small, large = sizes
        secs = {n: [r["seconds"] for r in res[n]] for n in sizes}
        rss = {n: [r["maxrss_kib"] / 1024 for r in res[n]] for n in sizes}
        rows = []
        for n in sizes:
            mib = files[n].stat().st_size / 2**20
            rows.append([f"{n:,}", f"{mib:.0f}", Stats.of(secs[n]).fmt(), f"{Stats.of([n / s for s in secs[n]]).median:,.0f}",
                         Stats.of(rss[n]).fmt()])
        slope = Stats.of([(large - small) / (b - a) for a, b in zip(secs[small], secs[large], strict=True) if b > a])
        ratio = Stats.of([b / a for a, b in zip(rss[small], rss[large], strict=True)])
    section.add(
        f"`trainforge predict MODEL --input FILE --output OUT --provider cpu` as a subprocess, {repeats} "
        "interleaved repeats (median (min–max)); digits MLP, 64 integer columns, output = label + 10 "
        "probabilities per row. Peak RSS is the kernel's high-water mark of the predict process.", "")
    section.table(["rows", "CSV MiB", "wall s", "rows/s (incl. start-up)", "peak RSS MiB"], rows)
    section.add(f"Steady-state throughput (slope between the two sizes): **{slope.median:,.0f} rows/s** "
                f"({slope.min:,.0f}–{slope.max:,.0f}). Peak RSS at {large:,} / {small:,} rows: "
                f"**{ratio.fmt()}**.", "")
    section.checks.append(Check(f"predict peak RSS {large // 1000}k / {small // 1000}k rows", ratio.median, 1.2,
                                note=f"min {ratio.min:.3f}, max {ratio.max:.3f}"))
    return section


if __name__ == "__main__":
    print(run(repeats=2).markdown())
