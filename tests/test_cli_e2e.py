"""End to end through the CLI on digits: train (console script) -> data -> predict reproduces the run.

The CNN is trained once per session by the real ``trainforge`` console script (``digits_run`` in
conftest.py); these tests read its MLflow store and ONNX file and write only into their own directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import last_json, mlflow_client

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "predict_onnx.py"


def test_console_script_trains_digits_cnn(digits_run):
    result = digits_run.result
    assert set(result) >= {"run_id", "metrics", "onnx_path"}
    assert result["config"]["model"]["name"] == "cnn"
    assert result["config"]["trainer"]["epochs"] == 5
    assert result["epochs_run"] == 5
    assert 1 <= result["best_epoch"] <= 5
    # sanity, not the 0.97 goal of a full run: five epochs of the Keras convnet already do well on digits
    assert result["metrics"]["test_accuracy"] > 0.8
    assert set(result["metrics"]) >= {"test_loss", "test_accuracy", "test_precision", "test_recall", "test_f1"}
    # the default store lives under the working directory the command ran in
    assert (digits_run.root / "mlruns" / "mlflow.db").is_file()
    onnx_path = Path(result["onnx_path"])
    assert onnx_path.is_file()
    assert onnx_path.resolve().is_relative_to((digits_run.root / "mlruns").resolve())
    assert all(d <= 1e-4 for d in result["parity_max_abs_diff"].values())
    assert "Traceback" not in digits_run.stderr


def test_data_then_predict_reproduces_test_accuracy(digits_run, run_cli, workdir):
    """``trainforge data --run`` + ``trainforge predict runs:/RUN`` give the run's own test accuracy."""
    uri = digits_run.tracking_uri
    run_cli("data", "--run", digits_run.run_id, "--split", "test", "--output", "test.csv", "--tracking-uri", uri)
    frame = pd.read_csv(workdir / "test.csv")
    run = mlflow_client(digits_run.root).get_run(digits_run.run_id)
    assert len(frame) == int(run.data.params["data.test_size"])
    assert frame.shape[1] == 64 + 1 and "target" in frame.columns

    proc = run_cli("predict", f"runs:/{digits_run.run_id}", "--input", "test.csv", "--target", "target",
                   "--json", "--tracking-uri", uri, "--provider", "cpu")
    summary = last_json(proc.stdout)
    assert summary["rows"] == len(frame)
    assert summary["provider"] == "CPUExecutionProvider"  # the provider that really ran (CUDA: tests/test_gpu.py)
    logged = run.data.metrics["test_accuracy"]
    assert abs(summary["metrics"]["accuracy"] - logged) <= 1e-6
    assert abs(logged - digits_run.result["metrics"]["test_accuracy"]) <= 1e-9


def test_predict_formats_agree(digits_run, cli, workdir):
    """CSV, Parquet and .npy inputs give the same predictions; probabilities are a distribution."""
    uri = digits_run.tracking_uri
    cli("data", "--run", digits_run.run_id, "--split", "test", "--output", "test.csv", "--tracking-uri", uri)
    cli("data", "--run", digits_run.run_id, "--split", "test", "--output", "test.parquet", "--tracking-uri", uri)
    frame = pd.read_csv(workdir / "test.csv")
    np.save(workdir / "test.npy", frame.drop(columns=["target"]).to_numpy(dtype=np.float32).reshape(-1, 1, 8, 8))
    model = digits_run.result["onnx_path"]

    out = cli("predict", model, "--input", "test.csv", "--output", "pred_csv.csv", "--target", "target", "--json")
    summary = last_json(out.output)
    by_csv = pd.read_csv(workdir / "pred_csv.csv")
    assert len(by_csv) == len(frame) == summary["rows"]
    probs = by_csv[[f"prob_{k}" for k in range(10)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == by_csv["prediction"].to_numpy()).all()
    accuracy = float((by_csv["prediction"].to_numpy() == frame["target"].to_numpy()).mean())
    assert abs(summary["metrics"]["accuracy"] - accuracy) <= 1e-12

    cli("predict", model, "--input", "test.parquet", "--output", "pred_pq.csv")
    cli("predict", model, "--input", "test.npy", "--output", "pred_npy.csv")
    for other in ("pred_pq.csv", "pred_npy.csv"):
        got = pd.read_csv(workdir / other)
        assert (got["prediction"] == by_csv["prediction"]).all(), other
        np.testing.assert_allclose(got.filter(like="prob_").to_numpy(), probs, atol=1e-6)

    # without --output the predictions go to stdout as CSV
    stdout = cli("predict", model, "--input", "test.npy").output
    assert stdout.splitlines()[0].startswith("prediction,prob_0")


def test_predict_matches_rows_by_feature_name(digits_run, cli, workdir):
    """Columns in another order (and an extra target column) are matched by the model's feature names."""
    cli("data", "--run", digits_run.run_id, "--output", "test.csv", "--tracking-uri", digits_run.tracking_uri)
    frame = pd.read_csv(workdir / "test.csv")
    shuffled = frame[list(reversed(frame.columns))]
    shuffled.to_csv(workdir / "shuffled.csv", index=False)
    model = digits_run.result["onnx_path"]
    a = last_json(cli("predict", model, "-i", "test.csv", "--target", "target", "--json").output)
    b = last_json(cli("predict", model, "-i", "shuffled.csv", "--target", "target", "--json").output)
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"] > 0.8


def test_standalone_example_script_agrees(digits_run, cli, workdir):
    """examples/predict_onnx.py (numpy + onnxruntime only) reads the metadata and predicts the same labels."""
    cli("data", "--run", digits_run.run_id, "--output", "test.csv", "--tracking-uri", digits_run.tracking_uri)
    model = digits_run.result["onnx_path"]
    cli("predict", model, "--input", "test.csv", "--output", "pred.csv", "--provider", "cpu")
    proc = subprocess.run([sys.executable, str(EXAMPLE), model, "test.csv", "--target", "target",
                           "--provider", "cpu"], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("prediction,prob_0")
    labels = [line.split(",")[0] for line in lines[1:]]
    expected = pd.read_csv(workdir / "pred.csv")["prediction"].astype(str).tolist()
    assert labels == expected
    assert "accuracy" in proc.stderr and "CPUExecutionProvider" in proc.stderr


def test_train_json_is_one_object(cli, workdir):
    """``train --json`` prints exactly one JSON object (nothing else on stdout) with the documented keys."""
    out = cli("train", "--model", "mlp", "--dataset", "iris", "--epochs", "2", "--quiet", "--no-export",
              "--json").output
    objects = [line for line in out.splitlines() if line.startswith("{")]
    assert len(objects) == 1
    data = json.loads(objects[0])
    assert data["onnx_path"] is None  # --no-export
    assert data["config"]["dataset"]["name"] == "iris"
    assert 0.0 <= data["metrics"]["test_accuracy"] <= 1.0
    assert mlflow_client(workdir).get_run(data["run_id"]).info.status == "FINISHED"
