"""Larger-than-memory training: peak RSS and rows/s of `trainforge train` on streamed Parquet files.

Generates Parquet files of 500k and 5M rows x 20 float32 features (row groups of 100k rows), trains an
MLP for one epoch with ``-p dataset.streaming=true`` in a subprocess, and reports wall time, training
rows per second and the subprocess's peak RSS (``ru_maxrss``). Memory must stay flat as the file grows:
the 5M-row run must stay under 1.5 GB.

    python benchmarks/bench_streaming.py [--rows 500000 5000000] [--out benchmarks/RESULTS_streaming.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = 20


def generate(path: Path, rows: int, row_group: int = 100_000, seed: int = 0) -> None:
    """A synthetic binary task: label = sign of a fixed linear function of the features, 10% noise."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=FEATURES)
    writer = None
    for start in range(0, rows, row_group):
        n = min(row_group, rows - start)
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        y = ((x @ w + rng.normal(scale=0.5, size=n)) > 0).astype(np.int64)
        cols = {f"f{i}": x[:, i] for i in range(FEATURES)} | {"label": y}
        table = pa.table(cols)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def run(path: Path, workdir: Path) -> dict:
    exe = shutil.which("trainforge", path=str(Path(sys.executable).parent)) or "trainforge"
    cmd = [exe, "train", "--model", "mlp", "--dataset", "csv", "-p", f"dataset.path={path}",
           "-p", "dataset.target=label", "-p", "dataset.streaming=true", "--epochs", "1", "--batch-size", "1024",
           "--patience", "0", "--quiet", "--json", "--no-export", "--tracking-uri",
           f"sqlite:///{workdir}/mlflow.db"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-2000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    train_rows = int(pq.ParquetFile(path).metadata.num_rows * 0.7)
    return {"wall_s": wall, "train_s": out["train_seconds"], "rows_per_s": train_rows / out["train_seconds"],
            "peak_rss_mb": max(peak_kb, before) / 1024, "test_accuracy": out["metrics"]["test_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[500_000, 5_000_000])
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_streaming.md")))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sorted(args.rows):
            path = Path(tmp) / f"data_{rows}.parquet"
            generate(path, rows)
            work = Path(tmp) / f"work_{rows}"
            work.mkdir()
            # RUSAGE_CHILDREN's max is over all children so far: run each size in its own child python
            code = (f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_streaming as b; "
                    f"print(json.dumps(b.run(b.Path({str(path)!r}), b.Path({str(work)!r}))))")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-2000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["rows"] = rows
            r["file_mb"] = os.path.getsize(path) / 2**20
            results.append(r)
            print(f"{rows:>9} rows ({r['file_mb']:.0f} MB): {r['rows_per_s']:,.0f} train rows/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, test acc {r['test_accuracy']:.3f}", flush=True)
    lines = ["# Streaming benchmark", "", f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs; one epoch, MLP, batch 1024,"
             " `-p dataset.streaming=true`.", "",
             "| rows | file MB | train rows/s | train s | wall s | peak RSS MB | test accuracy |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['file_mb']:.0f} | {r['rows_per_s']:,.0f} | {r['train_s']:.1f} | "
                     f"{r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['test_accuracy']:.3f} |")
    if len(results) > 1:
        lines += ["", f"Peak RSS ratio {results[-1]['rows']:,} vs {results[0]['rows']:,} rows: "
                  f"{results[-1]['peak_rss_mb'] / results[0]['peak_rss_mb']:.2f}x "
                  f"for {results[-1]['rows'] / results[0]['rows']:.0f}x the rows."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
