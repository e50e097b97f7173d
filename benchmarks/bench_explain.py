"""Cost of ``trainforge explain`` on the digits MLP: seconds and model calls per method on the same test rows,
side by side with ``mlflow.shap.log_explanation`` (KernelExplainer on a k-means background of 100 rows) on the
same ONNX model and rows, in one process run.

    .venv/bin/python benchmarks/bench_explain.py [--rows 1000] [--shap-rows 100] [--mlflow-rows 5]

Kernel SHAP costs ``(2 D + 2048) * 100`` model calls per row (D = 64 pixels): mlflow's explainer is timed on
``--mlflow-rows`` rows, trainforge's SHAP on ``--shap-rows`` (the first rows of the same set), and the ratio
is of seconds per row. Writes benchmarks/RESULTS_explain.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--shap-rows", type=int, default=100)
    parser.add_argument("--mlflow-rows", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    os.chdir(workdir)
    import mlflow
    import mlflow.shap

    from trainforge.explaining import methods as m
    from trainforge.explaining.api import onnx_predict, run_method
    from trainforge.explaining.subject import load_subject
    from trainforge.run.api import train

    # 60 % of the 1797 digits as the test split: 1078 rows to explain
    result = train(quiet=True, model__name="mlp", dataset__name="digits", trainer__epochs=args.epochs,
                   trainer__test_fraction=0.6, trainer__device="cpu")
    subject = load_subject(result.run_id, rows=args.rows)
    predict = onnx_predict(subject.onnx_path, subject.task)
    targets = predict(subject.x).argmax(1)
    bg = subject.pool[np.random.default_rng(0).choice(len(subject.pool), 100, replace=False)]
    settings = {"background": 100, "repeats": 5, "permutations": 1}
    rows_of = {"permutation": args.rows, "integrated-gradients": args.rows, "shap": args.shap_rows}
    table = []
    for method, n in rows_of.items():
        started = time.perf_counter()
        a = run_method(method, subject, predict, subject.x[:n], targets[:n], bg, settings)
        seconds = time.perf_counter() - started
        table.append((method, n, seconds, a.calls))
        print(f"{method}: {n} rows {seconds:.2f} s {a.calls:,} calls", flush=True)

    counted = m.Counted(lambda x: predict(np.asarray(x, np.float32).reshape(len(x), *subject.input_shape)))
    flat = subject.x[:args.mlflow_rows].reshape(args.mlflow_rows, -1).astype(np.float64)
    started = time.perf_counter()
    with mlflow.start_run():
        mlflow.shap.log_explanation(counted, flat)
    mlflow_seconds = time.perf_counter() - started
    print(f"mlflow.shap.log_explanation: {args.mlflow_rows} rows {mlflow_seconds:.2f} s {counted.calls:,} calls")
    shap_row = next(t for t in table if t[0] == "shap")
    ratio = (mlflow_seconds / args.mlflow_rows) / (shap_row[2] / shap_row[1])
    calls_ratio = (counted.calls / args.mlflow_rows) / (shap_row[3] / shap_row[1])
    _write(table, args, mlflow_seconds, counted.calls, ratio, calls_ratio, result.metrics)


def _write(table, args, mlflow_seconds, mlflow_calls, ratio, calls_ratio, metrics) -> None:
    lines = ["# trainforge explain vs mlflow.shap.log_explanation (digits MLP)", "",
             f"`benchmarks/bench_explain.py --rows {args.rows} --shap-rows {args.shap_rows} --mlflow-rows "
             f"{args.mlflow_rows} --epochs {args.epochs}`; the MLP's test accuracy "
             f"{metrics.get('test_accuracy', float('nan')):.3f}; onnxruntime CPU provider; one process run.", "",
             "| method | rows | seconds | s/row | model calls | calls/row |", "|---|---:|---:|---:|---:|---:|"]
    for method, n, seconds, calls in table:
        lines.append(f"| trainforge {method} | {n} | {seconds:.2f} | {seconds / n:.4f} | {calls:,} | {calls / n:,.0f} |")
    lines.append(f"| mlflow.shap.log_explanation (KernelExplainer, k-means 100) | {args.mlflow_rows} | "
                 f"{mlflow_seconds:.2f} | {mlflow_seconds / args.mlflow_rows:.4f} | {mlflow_calls:,} | "
                 f"{mlflow_calls / args.mlflow_rows:,.0f} |")
    lines += ["", f"mlflow.shap / trainforge shap, seconds per row: **{ratio:.1f}x**; model calls per row: "
              f"**{calls_ratio:.1f}x**.", ""]
    (ROOT / "benchmarks" / "RESULTS_explain.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
