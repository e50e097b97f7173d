"""Deployment-aware tuning, checked from outside: re-time the Pareto front with plain onnxruntime sessions.

Runs (with ``--run``) or reads (``WORKDIR/tune.json``) the issue-16 study::

    trainforge tune --model mlp,cnn --dataset digits --objective val_accuracy --objective latency_ms \\
        --latency-batch 64 --search-quantization --n-trials 30 --n-jobs 2 --seed 0 \\
        --storage sqlite:///optuna.db --study digits-pareto --json

then, for every front trial, exports its file with ``trainforge export --study S --trial N`` (the int8 copy
for an int8 trial), scores it on the test split with ``trainforge predict``, and times it **here, with a
plain onnxruntime session** (no trainforge code: ``SessionOptions`` with 1 intra-op and 1 inter-op thread,
the CPU provider, onnxruntime's default graph optimisations), at batch 64 (the study's) and batch 1:
``ROUNDS`` interleaved rounds of 20 warm-up and 300 timed calls each; the table gives the median of the
round medians (min-max). The selected file (the one ``tune`` exported into the parent run) is timed the
same way and compared with its logged p50 (target: within +-25%) and logged test accuracy (must be equal).

Writes ``benchmarks/RESULTS_pareto.md`` and copies the parent run's ``plots/pareto_front.png`` to
``docs/img/pareto_front.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
ROUNDS, WARMUP, CALLS = 5, 20, 300
TUNE = ["tune", "--model", "mlp,cnn", "--dataset", "digits", "--objective", "val_accuracy", "--objective",
        "latency_ms", "--latency-batch", "64", "--search-quantization", "--n-trials", "30", "--n-jobs", "2",
        "--seed", "0", "--storage", "sqlite:///optuna.db", "--study", "digits-pareto", "--json"]


def trainforge(workdir: Path, *args: str) -> str:
    exe = shutil.which("trainforge", path=str(Path(sys.executable).parent)) or "trainforge"
    proc = subprocess.run([exe, *args], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"})
    if proc.returncode != 0:
        raise SystemExit(f"trainforge {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def last_json(text: str) -> dict:
    return next(json.loads(line) for line in reversed(text.splitlines()) if line.startswith("{"))


def plain_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def p50_ms(session: ort.InferenceSession, x: np.ndarray) -> float:
    feed = {session.get_inputs()[0].name: x}
    for _ in range(WARMUP):
        session.run(None, feed)
    times = []
    for _ in range(CALLS):
        started = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - started) / 1e6)
    return statistics.median(times)


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where the study lives (mlruns/, optuna.db)")
    parser.add_argument("--run", action="store_true", help="run the tune command first (minutes)")
    args = parser.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.run:
        load = os.getloadavg()
        started = time.perf_counter()
        (work / "tune.json").write_text(trainforge(work, *TUNE))
        (work / "tune_meta.json").write_text(json.dumps({"seconds": time.perf_counter() - started,
                                                        "load_before": load, "load_after": os.getloadavg()}))
    tuned = last_json((work / "tune.json").read_text())
    study, front, selected = tuned["study"], tuned["pareto"], tuned["selected"]
    storage = "sqlite:///optuna.db"
    out = work / "front"
    out.mkdir(exist_ok=True)
    trainforge(work, "data", "--run", tuned["best_run_id"], "--split", "test", "--output", str(out / "test.csv"))
    header = (out / "test.csv").read_text().splitlines()[0].split(",")
    table = np.genfromtxt(out / "test.csv", delimiter=",", skip_header=1, dtype=np.float32)
    features = [i for i, name in enumerate(header) if name != "target"]
    flat = table[:, features]
    files: dict[str, Path] = {}
    rows = []
    for entry in front:
        n = entry["trial"]
        report = last_json(trainforge(work, "export", "--study", study, "--storage", storage, "--trial", str(n),
                                      "--output", str(out / f"trial-{n}.onnx"), "--json"))
        path = Path(report["quantized"]["path"]) if "quantized" in report else Path(report["path"])
        files[f"#{n}"] = path
        rows.append({"trial": n, "quantize": "int8" if "quantized" in report else "none", **entry["values"]})
    files["selected"] = Path(tuned["onnx_path"])
    sessions = {key: plain_session(path) for key, path in files.items()}
    for row in rows:
        row["model"] = sessions[f"#{row['trial']}"].get_modelmeta().custom_metadata_map["trainforge.model"]
    accuracy = {key: last_json(trainforge(work, "predict", str(path), "--input", str(out / "test.csv"), "--target",
                                          "target", "--output", str(out / "pred.csv"), "--provider", "cpu",
                                          "--json"))["metrics"]["accuracy"] for key, path in files.items()}
    xs = {}  # the test rows in each file's input shape (its metadata), e.g. 64 columns -> (1, 8, 8)
    for key, session in sessions.items():
        shape = json.loads(session.get_modelmeta().custom_metadata_map["trainforge.input_shape"])[1:]
        xs[key] = np.ascontiguousarray(flat.reshape(-1, *shape))
    timed: dict[tuple[str, int], list[float]] = {(k, b): [] for k in files for b in (64, 1)}
    for r in range(ROUNDS):  # interleaved, the order rotating each round
        keys = list(files)[r % len(files):] + list(files)[:r % len(files)]
        for key in keys:
            for batch in (64, 1):
                timed[(key, batch)].append(p50_ms(sessions[key], xs[key][np.arange(batch) % len(xs[key])]))

    best = max(rows, key=lambda r: r["val_accuracy"])
    lines = [
        "# Deployment-aware tuning: the Pareto front re-timed (`benchmarks/bench_pareto.py`)", "",
        f"Study `{study}`: `trainforge {' '.join(TUNE)}`.",
        "", f"Machine: {os.cpu_count()} CPUs, onnxruntime {ort.__version__}; load average at the end "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}.", "",
        "| trial | model | int8 | val accuracy (tune) | test accuracy (`trainforge predict`) | p50 batch 64, logged (ms) "
        "| p50 batch 64, plain ORT (ms) | p50 batch 1, plain ORT (ms) | speed-up vs most accurate (batch 64 / 1) |",
        "|---|---|---|---|---|---|---|---|---|"]
    ref = {b: statistics.median(timed[(f"#{best['trial']}", b)]) for b in (64, 1)}
    for row in sorted(rows, key=lambda r: -r["val_accuracy"]):
        key = f"#{row['trial']}"
        mark = " (selected)" if row["trial"] == selected else ""
        speed = " / ".join(f"{ref[b] / statistics.median(timed[(key, b)]):.1f}x" for b in (64, 1))
        lines.append(f"| {row['trial']}{mark} | {row['model']} | {row['quantize']} | {row['val_accuracy']:.4f} | "
                     f"{accuracy[key]:.4f} | {row['latency_ms']:.4f} | {fmt(timed[(key, 64)])} | "
                     f"{fmt(timed[(key, 1)])} | {speed} |")
    logged = next(r["latency_ms"] for r in rows if r["trial"] == selected)
    again = statistics.median(timed[("selected", 64)])
    test_logged = tuned["test_metrics"].get("test_accuracy")
    lines += ["", f"Selected trial {selected}: logged p50 {logged:.4f} ms, plain onnxruntime {again:.4f} ms on the "
              f"exported file ({100 * (again / logged - 1):+.1f}%); test accuracy logged {test_logged:.4f}, "
              f"`trainforge predict` on the file {accuracy['selected']:.4f}."]
    meta = work / "tune_meta.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        lines.append(f"tune took {info['seconds']:.0f} s; load average before {info['load_before'][0]:.2f}, "
                     f"after {info['load_after'][0]:.2f}.")
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "RESULTS_pareto.md").write_text(text)
    plot = Path(tuned["onnx_path"]).parents[1] / "plots" / "pareto_front.png"
    if plot.exists():
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(plot, ROOT / "docs" / "img" / "pareto_front.png")
    print(text)


if __name__ == "__main__":
    main()
