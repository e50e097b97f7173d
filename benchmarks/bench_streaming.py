"""Larger-than-memory training: peak RSS over time and rows/s of `trainforge train` on streamed Parquet files.

Generates Parquet files of 200k, 2M and 6M rows x 20 float32 features (row groups of 200k rows) in a temp
dir, and runs ``trainforge train --model mlp --dataset csv -p dataset.streaming=true --epochs 1`` on each in
a child process (the real CLI, with the ONNX export unless ``--no-export``). The parent samples the RSS of
the child's whole process tree every 0.1 s with psutil, and the child stamps the start and the end of the
fit (the last batch and its validation) through a registered callback, so the samples split into three
phases:

- **before the fit**: start-up, the statistics pass over the file, opening the run;
- **during the fit**: the epoch (training batches and validation);
- **after the last batch**: test evaluation, artifacts and plots, the ONNX export and its parity check.

A late spike (something materializing the test split or the table after training) shows as the "after"
peak exceeding the "during" peak. The kernel's own peak (``ru_maxrss`` of the child, which no 0.1 s
sampling can miss) is reported beside it. Memory must stay flat as the file grows: the 6M-row run's
overall peak within 1.15x of the 200k-row run's.

``--raw`` runs the raw-table case instead: a CSV file (read in chunks by pandas) with 6 numeric columns
(2 % empty cells, a few ``n/a``), a 12-level ``site`` column (with empty cells), a ``code`` column of
50,000 levels (more than the tracked-level cap), a free-text ``note`` and string labels, at 200k and 2M
rows by default. Its one statistics pass, the sample fit, the per-fragment encoding and the raw-row export
gate all run; the figures go to the file's ``## Raw table`` section (the numeric table above is kept).

    python benchmarks/bench_streaming.py [--rows 200000 2000000 6000000] [--no-export] [--raw]
        [--out benchmarks/RESULTS_streaming.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = 20
ROW_GROUP = 200_000
#: seconds between two RSS samples of the child's process tree
INTERVAL = 0.1


def generate(path: Path, rows: int, row_group: int = ROW_GROUP, seed: int = 0) -> None:
    """A synthetic binary task: label = sign of a fixed linear function of the features, plus noise."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=FEATURES)
    with pq.ParquetWriter(path, pa.schema([*(pa.field(f"f{i}", pa.float32()) for i in range(FEATURES)),
                                           pa.field("label", pa.int64())])) as writer:
        for start in range(0, rows, row_group):
            n = min(row_group, rows - start)
            x = rng.normal(size=(n, FEATURES)).astype(np.float32)
            y = ((x @ w + rng.normal(scale=0.5, size=n)) > 0).astype(np.int64)
            writer.write_table(pa.table({f"f{i}": x[:, i] for i in range(FEATURES)} | {"label": y}),
                               row_group_size=row_group)


RAW_WORDS = [f"w{i}" for i in range(300)]
RAW_NUMERIC = 6


def generate_raw(path: Path, rows: int, block: int = ROW_GROUP, seed: int = 0) -> None:
    """The raw-table case (see the module docstring), written block by block (memory flat here too)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    w = rng.normal(size=RAW_NUMERIC)
    site_effect = rng.normal(size=12)
    for start in range(0, rows, block):
        n = min(block, rows - start)
        x = rng.normal(size=(n, RAW_NUMERIC))
        site = rng.integers(0, 12, n)
        words = rng.integers(0, len(RAW_WORDS), (n, 5))
        score = x @ w + site_effect[site] + (words[:, 0] < 30) * 1.5 + rng.normal(scale=0.5, size=n)
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(RAW_NUMERIC)])
        frame[rng.random((n, RAW_NUMERIC)) < 0.02] = np.nan
        frame = frame.astype(object)
        frame.iloc[rng.integers(0, n, 5), 0] = "n/a"
        frame["site"] = np.asarray([f"site{i}" for i in range(12)], dtype=object)[site]
        frame.loc[rng.random(n) < 0.02, "site"] = None
        frame["code"] = [f"c{v}" for v in rng.integers(0, 50_000, n)]
        frame["note"] = [" ".join(RAW_WORDS[j] for j in row) for row in words]
        frame["label"] = np.where(score > 0, "yes", "no")
        frame.to_csv(path, mode="w" if start == 0 else "a", header=start == 0, index=False)


def child(path: str, workdir: str, stamps: str, export: bool) -> None:
    """In the child process: register a callback stamping the fit's start and end, then run the CLI."""
    import trainforge
    from trainforge import manager
    from trainforge.cli.main import cli

    class Stamp(trainforge.Callback):
        def _write(self, event: str) -> None:
            with open(stamps, "a") as f:
                f.write(f"{event} {time.time()}\n")

        def on_fit_start(self, trainer) -> None:
            self._write("fit_start")

        def on_fit_end(self, trainer) -> None:
            self._write("fit_end")

    class Plugin:
        @staticmethod
        @trainforge.hookimpl
        def register_callbacks(register) -> None:
            register(trainforge.CallbackSpec(name="bench-stamp", build=lambda ctx: Stamp(), order=1000))

    manager.register_plugin(Plugin, name="bench-streaming")
    kind = "parquet" if path.endswith(".parquet") else "csv"
    args = ["train", "--model", "mlp", "--dataset", kind, "-p", f"dataset.path={path}", "-p", "dataset.target=label",
            "-p", "dataset.streaming=true", "--epochs", "1", "--batch-size", "1024", "--patience", "0", "--quiet",
            "--json", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db", *([] if export else ["--no-export"])]
    os.chdir(workdir)
    cli.main(args, prog_name="trainforge")


def tree_rss(proc) -> int:
    """RSS of a process and all its descendants, bytes (0 once it is gone)."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(path: Path, workdir: Path, export: bool = True) -> dict:
    """Train on ``path`` in a child process, sampling its tree's RSS; the phases' peaks (MB) and timings."""
    import psutil

    stamps = workdir / "stamps.txt"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_streaming as b; "
            f"b.child({str(path)!r}, {str(workdir)!r}, {str(stamps)!r}, {export!r})")
    samples: list[tuple[float, int]] = []
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k, s: out.__setitem__(k, s.read()), args=(k, s), daemon=True)
               for k, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for t in readers:
        t.start()
    while True:  # sample until the child exits; reap it with wait4 for the kernel's peak RSS
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        samples.append((time.time(), tree_rss(ps)))
        time.sleep(INTERVAL)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{out['stderr'][-3000:]}")
    marks = dict(line.split() for line in stamps.read_text().splitlines())
    fit_start, fit_end = float(marks["fit_start"]), float(marks["fit_end"])
    result = json.loads(out["stdout"].strip().splitlines()[-1])

    def peak(lo: float, hi: float) -> float:
        return max((rss for t, rss in samples if lo <= t < hi), default=0) / 2**20

    return {"wall_s": wall, "train_s": result["train_seconds"], "test_accuracy": result["metrics"]["test_accuracy"],
            "before_mb": peak(0, fit_start), "during_mb": peak(fit_start, fit_end),
            "after_mb": peak(fit_end, float("inf")), "after_s": samples[-1][0] - fit_end,
            "sampled_peak_mb": max(rss for _, rss in samples) / 2**20, "maxrss_mb": usage.ru_maxrss / 1024,
            "samples": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 2_000_000, 6_000_000])
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export (train --no-export)")
    parser.add_argument("--raw", action="store_true", help="the raw-table case (CSV, categories, text, empty cells)")
    parser.add_argument("--label", default="", help="a note for the results' heading (e.g. before/after)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS_streaming.md")))
    args = parser.parse_args()
    if args.raw:
        return main_raw(args)
    results = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for rows in sorted(args.rows):
            path = Path(tmp) / f"data_{rows}.parquet"
            generate(path, rows)
            work = Path(tmp) / f"work_{rows}"
            work.mkdir()
            r = run(path, work, export=not args.no_export)
            r["rows"], r["file_mb"] = rows, os.path.getsize(path) / 2**20
            r["rows_per_s"] = rows * 0.7 / r["train_s"]  # the hash split trains on ~70% of the rows
            results.append(r)
            print(f"{rows:>9,} rows ({r['file_mb']:.0f} MB): peak RSS before fit {r['before_mb']:.0f} MB, "
                  f"during {r['during_mb']:.0f} MB, after the last batch {r['after_mb']:.0f} MB "
                  f"(ru_maxrss {r['maxrss_mb']:.0f} MB); {r['rows_per_s']:,.0f} train rows/s, "
                  f"test acc {r['test_accuracy']:.4f}", flush=True)
    lines = ["# Streaming benchmark", "",
             f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs{', ' + args.label if args.label else ''}; "
             f"one epoch, MLP, batch 1024, `-p dataset.streaming=true`, row groups of {ROW_GROUP:,}, "
             f"{'no export' if args.no_export else 'with the ONNX export'}. RSS of the process tree sampled "
             f"every {INTERVAL} s; ru_maxrss is the kernel's peak of the process. Load average "
             f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (rows/s move with it; RSS much less).", "",
             "| rows | file MB | peak RSS before fit MB | during the fit MB | after the last batch MB | "
             "ru_maxrss MB | after-fit s | train rows/s | test accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['file_mb']:.0f} | {r['before_mb']:.0f} | {r['during_mb']:.0f} | "
                     f"{r['after_mb']:.0f} | {r['maxrss_mb']:.0f} | {r['after_s']:.1f} | {r['rows_per_s']:,.0f} | "
                     f"{r['test_accuracy']:.4f} |")
    if len(results) > 1:
        lo, hi = results[0], results[-1]
        lines += ["", f"Peak RSS ratio {hi['rows']:,} vs {lo['rows']:,} rows: "
                  f"{hi['sampled_peak_mb'] / lo['sampled_peak_mb']:.2f}x sampled, "
                  f"{hi['maxrss_mb'] / lo['maxrss_mb']:.2f}x ru_maxrss, for {hi['rows'] / lo['rows']:.0f}x the rows "
                  "(target: at most 1.15x)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


def main_raw(args: argparse.Namespace) -> None:
    """The raw-table case: peak RSS and seconds at each size, into the results file's ``## Raw table``."""
    rows_list = sorted(args.rows if args.rows != [200_000, 2_000_000, 6_000_000] else [200_000, 2_000_000])
    results, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for rows in rows_list:
            path = Path(tmp) / f"raw_{rows}.csv"
            generate_raw(path, rows)
            work = Path(tmp) / f"work_{rows}"
            work.mkdir()
            r = run(path, work, export=not args.no_export)
            r["rows"], r["file_mb"] = rows, os.path.getsize(path) / 2**20
            r["rows_per_s"] = rows * 0.7 / r["train_s"]
            results.append(r)
            print(f"{rows:>9,} raw rows ({r['file_mb']:.0f} MB): before fit {r['before_mb']:.0f} MB, during "
                  f"{r['during_mb']:.0f} MB, after {r['after_mb']:.0f} MB (ru_maxrss {r['maxrss_mb']:.0f} MB); "
                  f"wall {r['wall_s']:.0f} s, test acc {r['test_accuracy']:.4f}", flush=True)
    lines = ["## Raw table", "",
             f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs{', ' + args.label if args.label else ''}; "
             f"`python benchmarks/bench_streaming.py --raw`: a CSV with {RAW_NUMERIC} numeric columns (2 % empty, "
             "some `n/a`), a 12-level `site` (2 % empty), a 50,000-level `code` (above the 10,000 tracked-level "
             "cap), a 5-word `note` (TF-IDF) and yes/no labels; one epoch, MLP, batch 1024, "
             f"{'no export' if args.no_export else 'with the ONNX export and its raw-row gate'}. Load average "
             f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after.", "",
             "| rows | file MB | wall s | train s | peak RSS before fit MB | during the fit MB | after the last batch MB "
             "| ru_maxrss MB | train rows/s | test accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['file_mb']:.0f} | {r['wall_s']:.0f} | {r['train_s']:.0f} | "
                     f"{r['before_mb']:.0f} | {r['during_mb']:.0f} | {r['after_mb']:.0f} | {r['maxrss_mb']:.0f} | "
                     f"{r['rows_per_s']:,.0f} | {r['test_accuracy']:.4f} |")
    if len(results) > 1:
        lo, hi = results[0], results[-1]
        lines += ["", f"Peak RSS ratio {hi['rows']:,} vs {lo['rows']:,} raw rows: "
                  f"{hi['sampled_peak_mb'] / lo['sampled_peak_mb']:.2f}x sampled, "
                  f"{hi['maxrss_mb'] / lo['maxrss_mb']:.2f}x ru_maxrss, for {hi['rows'] / lo['rows']:.0f}x the rows."]
    out = Path(args.out)
    kept = out.read_text().split("## Raw table")[0].rstrip() + "\n\n" if out.exists() else "# Streaming benchmark\n\n"
    out.write_text(kept + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
