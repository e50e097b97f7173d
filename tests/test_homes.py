"""One home per concept: checkpoints (training.checkpoint, tracking.checkpoints), ONNX metadata
(exporting.metadata), onnxruntime sessions (exporting.sessions) and process liveness (tracking.liveness).

Real parts only: a real 1-epoch run in a real MLflow store, its exported file in real onnxruntime
sessions, real child processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import store_uri

import trainforge
from trainforge.errors import ConfigError, ExportError, TrainforgeError
from trainforge.exporting import metadata
from trainforge.exporting.sessions import open_session
from trainforge.tracking import checkpoints, liveness
from trainforge.training import checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An MLP trained 1 epoch on iris and exported, in its own store; the test rows of its split."""
    root = tmp_path_factory.mktemp("one_epoch")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = trainforge.train(model__name="mlp", dataset__name="iris", trainer__epochs=1, trainer__device="cpu",
                                  quiet=True)
    from trainforge.run.api import load_data

    return root, result, load_data(result.config).test.x.numpy().astype(np.float32)


@pytest.fixture
def one_epoch(trained):
    """:func:`trained`'s run and rows, with MLflow pointed at its store (other tests reset the URI)."""
    from trainforge.tracking import store

    root, result, x = trained
    store.setup_uri(store_uri(root))
    yield result, x
    import mlflow

    mlflow.set_tracking_uri(None)


def test_fetch_and_rebuild_give_the_model_the_onnx_file_runs(one_epoch):
    result, x = one_epoch
    saved = checkpoints.fetch(result.run_id)
    assert saved["epoch"] == 1 and saved["config"]["model"]["name"] == "mlp"
    model, task, meta, config = checkpoint.rebuild(saved)
    assert not model.training and meta.class_names == ["setosa", "versicolor", "virginica"]
    assert config == saved["config"] and task.onnx_outputs[0] == "logits"
    session, active = open_session(result.onnx_path, "cpu", threads=1)
    assert active == "CPUExecutionProvider"
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    (logits,) = session.run(["logits"], {"input": x})
    assert np.max(np.abs(logits - expected)) < 1e-4  # the rebuilt weights are the exported ones


def test_last_checkpoint_resumes_but_holds_no_model(one_epoch):
    result, _ = one_epoch
    last = checkpoints.fetch(result.run_id, checkpoints.LAST)
    assert {"trainer", "config", "meta", "format"} <= set(last)
    with pytest.raises(TrainforgeError, match="holds no model weights"):
        checkpoint.rebuild(last)
    with pytest.raises(TrainforgeError, match="^no such file: say so$"):
        checkpoints.fetch(result.run_id, "checkpoints/none.pt", missing="no such file: say so")


def test_save_load_round_trip_and_damaged_file(tmp_path):
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    path = tmp_path / checkpoint.BEST
    checkpoint.save(path, weights, {"model": {"name": "mlp"}}, {"task": "classification"}, 3, {"val_loss": 0.5})
    back = checkpoint.load(path)
    assert torch.equal(back["state_dict"]["w"], weights["w"])
    assert (back["epoch"], back["metrics"], back["format"]) == (3, {"val_loss": 0.5}, checkpoint.FORMAT)
    assert not list(path.parent.glob("*.tmp"))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(TrainforgeError, match="best.pt: not a readable trainforge checkpoint"):
        checkpoint.load(path)


def test_metadata_round_trip_with_one_key_set_for_torch_and_estimator(one_epoch, tmp_path):
    result, _ = one_epoch
    stored = metadata.read(result.onnx_path)
    assert set(stored) == set(metadata.KEYS)
    assert stored["mlflow_run_id"] == result.run_id and stored["estimator"] == "" and stored["model"] == "mlp"
    assert stored["normalization"]["applied_in_graph"] is True
    # rewrite the file's metadata from the same run's meta: read back as built
    proto = onnx.load(result.onnx_path)
    meta = checkpoint.rebuild(checkpoints.fetch(result.run_id)).meta
    entries = metadata.build(meta, ["logits", "probabilities"], metadata.Gate(18, {1: 0.0, 30: 1e-6}),
                             run_id="r1", config={"model": {"name": "x"}}, part="")
    metadata.write(proto, entries)
    onnx.save(proto, tmp_path / "again.onnx")
    again = metadata.read(tmp_path / "again.onnx")
    assert again == {k: metadata.decode({metadata.PREFIX + k: v})[k] for k, v in entries.items()}
    assert again["parity_max_abs_diff"] == {"1": 0.0, "30": 1e-6} and again["parity_cuda_max_abs_diff"] is None
    from sklearn.linear_model import LogisticRegression

    estimator = metadata.build(meta, ["label", "probabilities"], metadata.Gate(18, {1: 0.0}),
                               estimator=LogisticRegression())
    assert tuple(estimator) == metadata.KEYS and estimator["estimator"] == "LogisticRegression"
    assert json.loads(estimator["normalization"])["applied_in_graph"] is False


def test_class_names_mismatch_is_a_clear_error(one_epoch, tmp_path):
    result, _ = one_epoch
    proto = onnx.load(result.onnx_path)
    entries = metadata.raw(proto)
    entries["class_names"] = json.dumps(["setosa", "versicolor"])
    with pytest.raises(ExportError, match=r"class_names mismatch: the model's 'logits' output has 3 classes but "
                                          r"the metadata names 2 \(setosa, versicolor\)"):
        metadata.write(proto, entries)
    with pytest.raises(ExportError, match="has 3 classes but the metadata names none"):
        metadata.class_names({"class_names": None}, 3)


def test_open_session_threads_bytes_and_errors(one_epoch, tmp_path):
    result, x = one_epoch
    session, _ = open_session(result.onnx_path, "cpu", threads=1)
    assert session.get_session_options().intra_op_num_threads == 1
    from_bytes, active = open_session(onnx.load(result.onnx_path).SerializeToString(), "auto")
    assert active in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert np.array_equal(from_bytes.run(["probabilities"], {"input": x})[0].argmax(1),
                          session.run(["probabilities"], {"input": x})[0].argmax(1))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(TrainforgeError, match=f"^{bad}: cannot load the ONNX model"):
        open_session(bad)
    with pytest.raises(ConfigError, match="unknown provider 'tpu'"):
        open_session(result.onnx_path, "tpu")


def test_predict_threads_option(one_epoch, cli, workdir):
    result, x = one_epoch
    np.save(workdir / "rows.npy", x)
    out = cli("predict", result.onnx_path, "--input", "rows.npy", "--threads", "1", "--json").output
    assert json.loads(out.strip().splitlines()[-1])["rows"] == len(x)
    bad = cli("predict", result.onnx_path, "--input", "rows.npy", "--threads", "0", ok=False)
    assert bad.exit_code == 2 and "--threads" in bad.output


def test_liveness_follows_a_real_child_process():
    me = liveness.this_process()
    assert liveness.alive(me.host, me.pid, me.start) is True
    assert liveness.alive(me.host, me.pid, str(int(me.start or 0) + 1)) is (False if me.start else True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        start = liveness.start_ticks(child.pid)
        assert liveness.alive(me.host, child.pid, start) is True
        assert liveness.alive(f"not-{me.host}", child.pid, start) is None  # another host: cannot tell
        assert liveness.alive(me.host, None) is None and liveness.alive("", child.pid) is None
    finally:
        os.kill(child.pid, signal.SIGTERM)
        child.wait(timeout=30)
    assert liveness.alive(me.host, child.pid, start) is False
