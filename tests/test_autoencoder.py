"""The autoencoder: reconstruction beats PCA at the same code size, and ``trainforge export --part encoder``
writes the encoder alone (raw digits in, the 8-d code out)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import error_line, last_json, mlflow_client
from sklearn.decomposition import PCA

import trainforge
from trainforge.run.api import load_data


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """A dense autoencoder with an 8-d code trained on digits, in its own store (shared by the tests)."""
    root = tmp_path_factory.mktemp("autoencoder")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = trainforge.train(model__name="autoencoder", dataset__name="digits", optimizer__lr=0.003,
                                  overrides=["model.kind=dense", "model.latent_dim=8", "trainer.epochs=40",
                                             "trainer.patience=0", "trainer.batch_size=32"],
                                  quiet=True, export=False)
    return root, result


def test_autoencoder_beats_pca_with_8_components(dense_run):
    root, result = dense_run
    bundle = load_data(result.config)
    assert bundle.meta.task == "reconstruction" and bundle.meta.input_shape == (1, 8, 8)
    x_train = bundle.train.x.numpy().reshape(len(bundle.train), -1)
    x_test = bundle.test.x.numpy().reshape(len(bundle.test), -1)
    pca = PCA(n_components=8, random_state=0).fit(x_train)
    pca_mse = float(((pca.inverse_transform(pca.transform(x_test)) - x_test) ** 2).mean())
    with torch.inference_mode():
        recon = result.model.cpu().eval()(bundle.test.x).numpy().reshape(len(x_test), -1)
    ae_mse = float(((recon - x_test) ** 2).mean())
    assert result.metrics["test_mse"] == pytest.approx(ae_mse, rel=1e-4)  # the logged metric is this MSE
    assert ae_mse < pca_mse, (ae_mse, pca_mse)
    run = mlflow_client(root).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trainforge.task"] == "reconstruction"
    artifacts = [a.path for a in mlflow_client(root).list_artifacts(result.run_id, "plots")]
    assert "plots/reconstructions.png" in artifacts


def test_export_part_encoder(dense_run, cli, workdir, monkeypatch):
    root, result = dense_run
    monkeypatch.chdir(root)
    report = last_json(cli("export", result.run_id, "--part", "encoder", "--output", str(workdir / "enc.onnx"),
                           "--json").output)
    assert max(report["max_abs_diff"].values()) <= 1e-4
    session = ort.InferenceSession(str(workdir / "enc.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["latent"]
    props = session.get_modelmeta().custom_metadata_map
    assert props["trainforge.part"] == "encoder" and json.loads(props["trainforge.outputs"]) == ["latent"]
    x = load_data(result.config).test.x[:17]
    (code,) = session.run(["latent"], {"input": x.numpy()})
    model = result.model.cpu().eval()
    with torch.inference_mode():
        expected = model.net.encoder(model.prepare(x)).numpy()
    assert code.shape == (17, 8)
    np.testing.assert_allclose(code, expected, atol=1e-4)


def test_unknown_part_is_one_line_error(dense_run, cli, monkeypatch):
    root, result = dense_run
    monkeypatch.chdir(root)
    line = error_line(cli("export", result.run_id, "--part", "decoder", ok=False))
    assert "no part 'decoder'" in line and "encoder" in line
