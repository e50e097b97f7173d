"""More options no other test runs: predict across chunk boundaries, plugin tracing, DDP with export and
with streaming. Real console scripts, real torchrun processes, real onnxruntime sessions."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import error_line, last_json, mlflow_client

from trainforge.exporting.predictor import CHUNK_ROWS


def _digits_rows(n: int) -> pd.DataFrame:
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    rows = x[np.arange(n) % len(x)]
    return pd.DataFrame(rows, columns=[f"pixel_{r}_{c}" for r in range(8) for c in range(8)])


def test_predict_across_chunk_boundaries_matches_one_session_call(digits_run, cli, workdir):
    n = 2 * CHUNK_ROWS + 100  # three chunks, the last one short
    frame = _digits_rows(n)
    frame.to_csv(workdir / "many.csv", index=False)
    summary = last_json(cli("predict", digits_run.result["onnx_path"], "--input", "many.csv", "--output",
                            "pred.csv", "--provider", "cpu", "--json").output)
    assert summary["rows"] == n
    pred = pd.read_csv(workdir / "pred.csv")
    session = ort.InferenceSession(digits_run.result["onnx_path"], providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"input": frame.to_numpy(np.float32).reshape(n, 1, 8, 8)})[0]
    assert len(pred) == n
    np.testing.assert_allclose(pred[[c for c in pred.columns if c.startswith("prob_")]].to_numpy(), probs,
                               atol=1e-5)
    assert (pred["prediction"].astype(str).to_numpy() == probs.argmax(1).astype(str)).all()


@pytest.mark.parametrize("bad, fragment", [("oops", "not a number"), (float("nan"), "NaN")])
def test_a_bad_row_after_the_first_chunk_reports_its_true_row_number(digits_run, cli, workdir, bad, fragment):
    frame = _digits_rows(CHUNK_ROWS + 5000).astype(object)
    index = CHUNK_ROWS + 1234  # in the second chunk: data row index + 1, CSV line index + 2 (the header is line 1)
    frame.iloc[index, 5] = bad
    frame.to_csv(workdir / "bad.csv", index=False)
    line = error_line(cli("predict", digits_run.result["onnx_path"], "--input", "bad.csv", "--output", "o.csv",
                          ok=False))
    assert f"row {index + 1} (line {index + 2})," in line and fragment in line and "bad.csv" in line
    assert "pixel_0_5" in line or "column 6" in line


def test_trace_plugins_logs_every_hook_call(run_cli):
    traced = run_cli("-v", "plugins", check=True, env_extra={"TRAINFORGE_TRACE_PLUGINS": "1"})
    assert "pluggy: calling register_models of trainforge.plugins.models" in traced.stderr
    plain = run_cli("-v", "plugins", check=True)
    assert "pluggy:" not in plain.stderr


@pytest.mark.slow
def test_ddp_two_processes_export_a_verified_onnx_file(run_cli, workdir):
    out = last_json(run_cli("train", "--model", "mlp", "--dataset", "digits", "--epochs", "6", "--nproc", "2",
                            "--device", "cpu", "--quiet", "--json").stdout)
    assert out["onnx_path"] and max(out["parity_max_abs_diff"].values()) <= 1e-4
    run = mlflow_client(workdir).get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["trainforge.world_size"] == "2"
    assert "onnx/model.onnx" in {a.path for a in mlflow_client(workdir).list_artifacts(out["run_id"], "onnx")}
    # the exported file is the trained model: it reproduces the logged test accuracy on the run's test rows
    run_cli("data", "--run", out["run_id"], "--split", "test", "--output", "test.csv")
    summary = last_json(run_cli("predict", out["onnx_path"], "--input", "test.csv", "--target", "target",
                                "--provider", "cpu", "--json").stdout)
    assert summary["metrics"]["accuracy"] == pytest.approx(out["metrics"]["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_ddp_two_processes_stream_a_csv_file(run_cli, workdir):
    from sklearn.datasets import load_wine

    from trainforge.training.streaming import split_codes

    frame = load_wine(as_frame=True).frame
    frame.to_csv(workdir / "wine.csv", index=False)
    out = last_json(run_cli("train", "--model", "mlp", "--dataset", "csv", "-p", "dataset.path=wine.csv",
                            "-p", "dataset.target=target", "-p", "dataset.streaming=true", "--epochs", "20",
                            "--nproc", "2", "--device", "cpu", "--quiet", "--json").stdout)
    run = mlflow_client(workdir).get_run(out["run_id"])
    assert run.data.tags["trainforge.world_size"] == "2"
    params = run.data.params
    codes = split_codes(np.arange(len(frame)), 0, 0.1, 0.2)
    assert int(params["data.train_size"]) == int((codes == 0).sum())  # the streamed (hash) split ran
    assert out["metrics"]["test_accuracy"] > 0.8
    assert out["onnx_path"] and max(out["parity_max_abs_diff"].values()) <= 1e-4
