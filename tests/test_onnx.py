"""The exported ONNX file: checked, self-contained, dynamic batch, metadata, parity with torch, the gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import last_json, mlflow_client

import trainforge
from trainforge import ExportError
from trainforge.exporting.exporter import export_model
from trainforge.training import checkpoint as ckpt
from trainforge.training.data import load as load_data
from trainforge.training.tasks import Classification


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def rebuilt(digits_run):
    """The torch model rebuilt from the run's best checkpoint, its meta and the run's test rows."""
    run = mlflow_client(digits_run.root).get_run(digits_run.run_id)
    checkpoint = ckpt.load(Path(run.info.artifact_uri.removeprefix("file://")) / ckpt.BEST)
    model, _task, meta, _config = ckpt.rebuild(checkpoint)
    bundle = load_data(checkpoint["config"]["dataset"], checkpoint["config"]["trainer"])
    x = bundle.test.x.numpy().astype(np.float32)
    return model, meta, x, checkpoint


def test_checker_passes_and_file_is_self_contained(digits_run):
    path = Path(digits_run.result["onnx_path"])
    onnx.checker.check_model(str(path), full_check=True)
    assert not list(path.parent.glob("*.data")), "an external-data sidecar was written"
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]
    proto = onnx.load(str(path), load_external_data=False)
    assert proto.graph.initializer, "no weights in the graph"
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_dynamic_batch(digits_run, rebuilt):
    _, _, x, _ = rebuilt
    session = _session(digits_run.result["onnx_path"])
    (inp,) = session.get_inputs()
    assert inp.name == "input"
    assert not isinstance(inp.shape[0], int), f"batch axis is fixed: {inp.shape}"
    assert inp.shape[1:] == [1, 8, 8]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    for n in (1, 7, len(x)):
        logits, probs = session.run(None, {"input": x[:n]})
        assert logits.shape == probs.shape == (n, 10)


def test_metadata_props(digits_run, rebuilt):
    _, meta, _, _ = rebuilt
    proto = onnx.load(digits_run.result["onnx_path"])
    props = {p.key: p.value for p in proto.metadata_props}
    assert props == _session(digits_run.result["onnx_path"]).get_modelmeta().custom_metadata_map
    md = {k.removeprefix("trainforge."): v for k, v in props.items() if k.startswith("trainforge.")}
    assert md["task"] == "classification"
    assert md["input_name"] == "input"
    assert json.loads(md["input_shape"]) == ["batch", 1, 8, 8]
    assert md["input_dtype"] == "float32"
    assert json.loads(md["class_names"]) == [str(i) for i in range(10)]
    norm = json.loads(md["normalization"])
    np.testing.assert_allclose(np.asarray(norm["mean"]), meta.mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(norm["std"]), meta.std, rtol=1e-6)
    assert md["version"] == trainforge.__version__
    assert md["mlflow_run_id"] == digits_run.run_id
    assert json.loads(md["feature_names"])[:2] == ["pixel_0_0", "pixel_0_1"]


def test_parity_with_torch_model_from_checkpoint(digits_run, rebuilt):
    model, _, x, _ = rebuilt
    session = _session(digits_run.result["onnx_path"])
    for rows in (x[:1], x[:7], x):  # batch 1, a small odd batch and the whole test split
        with torch.inference_mode():
            logits = model(torch.from_numpy(rows)).numpy()
        got_logits, got_probs = session.run(["logits", "probabilities"], {"input": rows})
        assert np.max(np.abs(got_logits - logits)) <= 1e-4
        assert np.max(np.abs(got_probs - torch.softmax(torch.from_numpy(logits), 1).numpy())) <= 1e-4
    # and the weights really are the trained ones: they classify the test split well
    run = mlflow_client(digits_run.root).get_run(digits_run.run_id)
    with torch.inference_mode():
        accuracy = float((model(torch.from_numpy(x)).argmax(1).numpy() ==
                          load_data({"name": "digits"}, rebuilt[3]["config"]["trainer"]).test.y.numpy()).mean())
    assert abs(accuracy - run.data.metrics["test_accuracy"]) <= 1e-6


def test_export_command_rebuilds_the_same_model(digits_run, cli, workdir):
    out = cli("export", digits_run.run_id, "--output", "out/exported.onnx", "--json",
              "--tracking-uri", digits_run.tracking_uri).output
    report = last_json(out)
    path = workdir / "out" / "exported.onnx"
    assert Path(report["path"]).resolve() == path.resolve()
    assert [p.name for p in path.parent.iterdir()] == ["exported.onnx"]  # no sidecar
    assert report["max_abs_diff"] and all(v <= 1e-4 for v in report["max_abs_diff"].values())
    onnx.checker.check_model(str(path), full_check=True)
    x = np.random.default_rng(0).uniform(0, 16, size=(9, 1, 8, 8)).astype(np.float32)
    new = _session(path).run(None, {"input": x})
    old = _session(digits_run.result["onnx_path"]).run(None, {"input": x})
    for a, b in zip(new, old, strict=True):
        assert np.max(np.abs(a - b)) <= 1e-5
    assert _session(path).get_modelmeta().custom_metadata_map["trainforge.mlflow_run_id"] == digits_run.run_id


def test_export_gate_refuses_a_parity_breach(rebuilt, tmp_path):
    """An impossible bound (tolerance -1) makes the gate refuse, and the file is not kept."""
    model, meta, x, checkpoint = rebuilt
    path = tmp_path / "refused.onnx"
    with pytest.raises(ExportError, match="parity"):
        export_model(model, Classification(), meta, x[:16], path, run_id="r",
                                       config=checkpoint["config"], tolerance=-1)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
    # the same call with the real bound passes and keeps the file
    report = export_model(model, Classification(), meta, x[:16], path, run_id="r",
                                            config=checkpoint["config"])
    assert path.is_file() and max(report.max_abs_diff.values()) <= 1e-4
    assert set(report.max_abs_diff) == {1, 16}
