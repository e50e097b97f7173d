"""int8 quantization (``trainforge export --quantize int8``): real trained models, real onnxruntime.

The CNN is the session's digits run (static QDQ, calibrated on its training split); the MLP is trained
here (dynamic quantization). Accuracy is checked on the run's test split and re-measured independently
with ``trainforge predict`` on that split written to CSV.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import last_json

import trainforge
from trainforge import ConfigError, TrainforgeError
from trainforge.exporting.quantize import quantize_model, quantize_run

MAX_LOSS_POINTS = 0.5  # issue 5: the int8 model loses at most 0.5 accuracy points on digits


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _int8_initializers(path: Path) -> int:
    proto = onnx.load(str(path))
    return sum(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer)


def test_cnn_static_qdq_through_the_cli(cli, digits_run, workdir):
    out = workdir / "cnn.onnx"
    result = cli("export", digits_run.run_id, "--output", out, "--quantize", "int8",
                 "--tracking-uri", digits_run.tracking_uri, "--json")
    report = last_json(result.output)
    q = report["quantized"]
    int8 = Path(q["path"])
    assert int8 == workdir / "cnn.int8.onnx" and int8.is_file() and out.is_file()
    assert q["method"] == "static-qdq" and q["calibration_rows"] > 0

    proto = onnx.load(str(int8))
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops, ops
    assert _int8_initializers(int8) >= 4, "the weights are not stored as int8"
    assert q["bytes_int8"] < q["bytes_fp32"] / 2

    # every trainforge.* entry of the verified fp32 file is kept, plus the quantization record
    source, quantized = _props(out), _props(int8)
    assert source and all(quantized.get(k) == v for k, v in source.items())
    info = json.loads(quantized["trainforge.quantization"])
    assert info["method"] == "static-qdq" and info["calibration"]["split"] == "train"
    assert info["test_metrics"]["int8_accuracy"] == pytest.approx(q["metrics"]["int8_accuracy"])

    m = q["metrics"]
    assert m["rows"] == 360
    assert m["fp32_accuracy"] - m["int8_accuracy"] <= MAX_LOSS_POINTS / 100 + 1e-9, m
    assert m["accuracy_change_points"] == pytest.approx(100 * (m["int8_accuracy"] - m["fp32_accuracy"]))

    # predict runs the int8 file like any trainforge model and reproduces the reported accuracy
    csv = workdir / "test.csv"
    cli("data", "--run", digits_run.run_id, "--split", "test", "--output", csv,
        "--tracking-uri", digits_run.tracking_uri)
    predicted = last_json(cli("predict", int8, "--input", csv, "--target", "target", "--provider", "cpu",
                              "--json").output)
    assert predicted["rows"] == 360
    assert predicted["metrics"]["accuracy"] == pytest.approx(m["int8_accuracy"], abs=1e-9)


def test_cli_prints_the_accuracy_change(cli, digits_run, workdir):
    result = cli("export", digits_run.run_id, "-o", workdir / "m.onnx", "--quantize", "int8",
                 "--tracking-uri", digits_run.tracking_uri)
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(f"wrote {workdir / 'm.int8.onnx'} (int8, static-qdq"), lines
    assert "test accuracy" in lines[-1] and "points" in lines[-1]


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A digits MLP trained for 15 epochs in its own store (exported, verified)."""
    import os

    root = tmp_path_factory.mktemp("mlp_run")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = trainforge.train(model__name="mlp", dataset__name="digits", trainer__epochs=15, quiet=True, trainer__device="cpu",
                                  tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    finally:
        os.chdir(cwd)
    return result, f"sqlite:///{root}/mlruns/mlflow.db"


def test_mlp_dynamic_quantization(mlp_run, tmp_path):
    result, uri = mlp_run
    report = quantize_run(result.run_id, result.onnx_path, tmp_path / "mlp.int8.onnx", tracking_uri=uri)
    assert report.method == "dynamic" and report.calibration_rows == 0
    ops = {n.op_type for n in onnx.load(str(report.path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops
    assert "Gemm" not in ops, "a dense layer was left in float"
    m = report.metrics
    assert m["fp32_accuracy"] == pytest.approx(result.metrics["test_accuracy"], abs=1e-9)
    assert m["fp32_accuracy"] - m["int8_accuracy"] <= MAX_LOSS_POINTS / 100 + 1e-9, m
    assert m["prediction_agreement"] >= 0.98
    assert 0 < m["mean_abs_output_diff"] < 0.5
    assert json.loads(_props(report.path)["trainforge.quantization"])["method"] == "dynamic"


def test_static_needs_calibration_rows(mlp_run, tmp_path):
    result, _ = mlp_run
    with pytest.raises(ConfigError, match="calibration"):
        quantize_model(result.onnx_path, tmp_path / "x.onnx", method="static")
    with pytest.raises(ConfigError, match="unknown quantization method"):
        quantize_model(result.onnx_path, tmp_path / "x.onnx", method="int4")
    assert not (tmp_path / "x.onnx").exists()


def test_static_on_an_mlp_uses_the_given_rows(mlp_run, tmp_path):
    result, _ = mlp_run
    rows = np.random.default_rng(0).uniform(0, 16, size=(100, 1, 8, 8)).astype(np.float32)
    report = quantize_model(result.onnx_path, tmp_path / "s.onnx", method="static", calibration=rows)
    assert report.method == "static-qdq" and report.calibration_rows == 100 and report.metrics == {}
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(report.path)).graph.node}


def test_rejects_a_model_without_trainforge_metadata(mlp_run, tmp_path):
    result, _ = mlp_run
    proto = onnx.load(result.onnx_path)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(TrainforgeError, match="not a trainforge model"):
        quantize_model(bare, tmp_path / "bare.int8.onnx")
