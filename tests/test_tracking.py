"""The MLflow run a training writes, read back through a real ``MlflowClient`` on the SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import last_json, mlflow_client
from mlflow.tracking import MlflowClient

import trainforge
from trainforge import config as config_mod


@pytest.fixture
def digits(digits_run, monkeypatch):
    """The session's digits run, its client, and MLflow pointed at its store for this test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", digits_run.tracking_uri)
    mlflow.set_tracking_uri(digits_run.tracking_uri)
    client = mlflow_client(digits_run.root)
    yield digits_run, client, client.get_run(digits_run.run_id)
    mlflow.set_tracking_uri(None)


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    out = set()
    for info in client.list_artifacts(run_id, path or None):
        out |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def test_run_finished_with_every_resolved_hyperparameter(digits):
    run_info, _, run = digits
    assert run.info.status == "FINISHED"
    params = run.data.params
    resolved = run_info.result["config"]
    flat = config_mod.flatten(resolved)
    assert flat, "the resolved config is empty"
    for key, value in flat.items():  # every resolved hyperparameter, as MLflow strings
        assert key in params, key
        expected = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        assert params[key] == expected, key
    assert params["model.name"] == "cnn"
    assert params["optimizer.name"] == "adam"
    assert float(params["optimizer.lr"]) == resolved["optimizer"]["lr"]
    assert params["trainer.epochs"] == "5"
    assert params["trainer.batch_size"] == str(resolved["trainer"]["batch_size"])
    # split sizes add up to the 1797 digits
    sizes = [int(params[f"data.{s}_size"]) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and all(n > 0 for n in sizes)
    assert json.loads(params["data.input_shape"]) == [1, 8, 8]


def test_plugin_origins_are_tagged(digits):
    _, _, run = digits
    tags = run.data.tags
    import trainforge

    for section, name in (("model", "cnn"), ("optimizer", "adam"), ("dataset", "digits")):
        assert tags[f"trainforge.plugin.{section}"] == f"{name} (trainforge {trainforge.__version__})"
    assert tags["trainforge.task"] == "classification"
    assert "trainforge.error" not in tags


def test_per_epoch_and_final_metrics(digits):
    run_info, client, run = digits
    epochs = run_info.result["epochs_run"]
    for key in ("train_loss", "val_loss", "val_accuracy", "val_f1", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
        assert all(np.isfinite(m.value) for m in history)
    val_acc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
    # the checkpoint is the best epoch by val_loss; its val_accuracy is one of the logged values
    best = int(run.data.metrics["best_epoch"])
    assert best == run_info.result["best_epoch"]
    val_loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
    assert best == min(sorted(val_loss), key=val_loss.get)
    assert 0.0 <= val_acc[best] <= 1.0
    for key, value in run_info.result["metrics"].items():  # final test metrics are logged too
        assert run.data.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert run.data.metrics["epochs_run"] == epochs


def test_artifacts(digits, tmp_path):
    run_info, client, run = digits
    names = _artifacts(client, run.info.run_id)
    for required in ("checkpoints/best.pt", "config.yaml", "plots/learning_curves.png",
                     "plots/confusion_matrix.png", "onnx/model.onnx"):
        assert required in names, f"{required} not among {sorted(names)}"
    assert not any(n.endswith(".onnx.data") for n in names)

    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path)))
    checkpoint = torch.load(local / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert {"state_dict", "config", "meta", "epoch"} <= set(checkpoint)
    assert checkpoint["config"] == run_info.result["config"]
    assert checkpoint["epoch"] == run_info.result["best_epoch"]
    assert all(isinstance(t, torch.Tensor) for t in checkpoint["state_dict"].values())
    assert yaml.safe_load((local / "config.yaml").read_text()) == run_info.result["config"]
    for png in ("learning_curves.png", "confusion_matrix.png"):
        data = (local / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_logged_mlflow_models_have_names_signatures_and_run(digits):
    run_info, _, run = digits
    uri = run.data.tags["trainforge.model_uri"]
    assert uri == run_info.result["model_uri"]
    logged = mlflow.get_logged_model(uri.split("/")[-1])
    assert logged.source_run_id == run.info.run_id and logged.name == "cnn-digits"
    # the pyfunc model: the training feature names in, class names and probabilities out
    info = mlflow.models.get_model_info(uri)
    names = [s.name for s in info.signature.inputs.inputs]
    assert names == [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    assert [s.name for s in info.signature.outputs.inputs] == ["prediction", *(f"prob_{i}" for i in range(10))]
    out = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame(np.zeros((3, 64)), columns=names))
    assert out["prediction"].isin([str(i) for i in range(10)]).all()
    np.testing.assert_allclose(out[[f"prob_{i}" for i in range(10)]].sum(axis=1), 1.0, rtol=1e-5)
    # the plain ONNX flavor, for ONNX-only consumers: a bare tensor in, the graph's outputs out
    plain = run.data.tags["trainforge.onnx_model_uri"]
    assert mlflow.get_logged_model(plain.split("/")[-1]).name == "cnn-digits-onnx"
    proto = mlflow.onnx.load_model(plain)
    assert [i.name for i in proto.graph.input] == ["input"]
    out = mlflow.pyfunc.load_model(plain).predict({"input": np.zeros((3, 1, 8, 8), dtype=np.float32)})
    assert np.asarray(out["probabilities"]).shape == (3, 10)
    # each environment names the one onnxruntime distribution installed (never both: they share a module)
    for model in (uri, plain):
        requirements = Path(mlflow.pyfunc.get_model_dependencies(model)).read_text().split()
        runtimes = [r for r in requirements if r.split("==")[0] in ("onnxruntime", "onnxruntime-gpu")]
        assert len(runtimes) == 1, requirements
        assert not any(r.split("==")[0] in ("torch", "trainforge") for r in requirements), requirements
    assert any(r.startswith("onnx==") for r in requirements)


def test_experiment_and_tracking_uri_options(cli, workdir):
    """--experiment names the experiment; --tracking-uri puts the store elsewhere (no default store)."""
    other = workdir / "elsewhere" / "store.db"
    out = cli("train", "--model", "mlp", "--dataset", "iris", "--epochs", "1", "--quiet", "--no-export", "--json",
              "--experiment", "my-exp", "--tracking-uri", f"sqlite:///{other}").output
    run_id = last_json(out)["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{other}")
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "my-exp"
    assert run.info.status == "FINISHED"
    assert not (workdir / "mlruns" / "mlflow.db").exists()


def test_deferred_interrupt_holds_ctrl_c_until_the_block_ends():
    """A Ctrl-C inside an MLflow write is delivered after it: the block completes, then KeyboardInterrupt."""
    import os
    import signal
    import time

    from trainforge.tracking.store import deferred_interrupt

    # The precondition, set here: pytest started from a shell that ignores SIGINT (e.g. in the background)
    # inherits SIGINT ignored, and then no Ctrl-C would reach this process at all.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        finished = []
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the signal has been handled by now: without the shield this line never ends
                finished.append(True)
        assert finished == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("epochs", [2, 3, 7])
def test_learning_curves_have_integer_epoch_ticks(epochs):
    from trainforge import plots

    history = [{"train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_accuracy": 0.5, "val_accuracy": 0.4}
               for e in range(1, epochs + 1)]
    fig = plots.learning_curves_figure(history, "classification")
    try:
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


class _SlowEpochs(trainforge.Callback):
    """Makes each epoch last 0.25 s more and, at each epoch's end, reads back the epochs the store holds."""

    def __init__(self, run_id_of):
        self.run_id_of, self.seen = run_id_of, []

    def on_epoch_end(self, trainer, epoch, metrics):
        import time

        time.sleep(0.25)
        steps = [m.step for m in MlflowClient().get_metric_history(self.run_id_of(), "val_loss")]
        self.seen.append((epoch, steps))


def test_per_epoch_metrics_reach_the_store_during_the_fit(workdir):
    """The UI lags the fit by about a second (MLflowLogger writes in a thread every second), every epoch is
    written exactly once, and the end-of-fit write is complete when the run ends."""
    probe = _SlowEpochs(lambda: mlflow.active_run().info.run_id)
    result = trainforge.train(model__name="mlp", dataset__name="iris", overrides=["trainer.epochs=12",
                              "trainer.patience=0"], quiet=True, export=False, callbacks=[probe])
    # about 3 s of fit: epochs 1-4 are written while it runs, long before its end
    assert any(epoch <= 9 and steps[:4] == [1, 2, 3, 4] for epoch, steps in probe.seen), probe.seen
    history = MlflowClient().get_metric_history(result.run_id, "val_loss")
    assert sorted(m.step for m in history) == list(range(1, 13))
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [h["val_loss"] for h in result.history])


def _set_same_new_tags(uri: str, run_id: str, start: float, out) -> None:
    import time

    from trainforge.tracking.tags import set_tags

    mlflow.set_tracking_uri(uri)
    client, failures = MlflowClient(), 0
    for i in range(25):  # the processes write tag k<i> at the same instant: both see it absent, both insert
        while time.time() < start + 0.12 * i:
            time.sleep(0.001)
        try:
            set_tags(run_id, {f"k{i}": str(i)}, client)
        except Exception:  # noqa: BLE001 - counted: the assertion is that there are none
            failures += 1
    out.put(failures)


def test_processes_setting_the_same_new_tags_on_one_run_all_succeed(tmp_path):
    """A study's parent run is written by every worker at once (CI: a worker died of ``IntegrityError: UNIQUE
    constraint failed: tags.key, tags.run_uuid`` from ``MlflowClient.set_tag``); ``tags.set_tags`` is not."""
    import multiprocessing as mp
    import time

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run("0").info.run_id
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 8  # after the spawned interpreters have imported mlflow
    procs = [ctx.Process(target=_set_same_new_tags, args=(uri, run_id, start, out)) for _ in range(3)]
    for p in procs:
        p.start()
    failures = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert failures == [0, 0, 0]
    assert client.get_run(run_id).data.tags["k24"] == "24"
