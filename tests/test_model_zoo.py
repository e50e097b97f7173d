"""One shared test over every built-in model: train briefly on a compatible bundled dataset, the MLflow
run ends FINISHED, the ONNX gate passed, and ``trainforge predict`` agrees with the in-process model.

A built-in model missing from ``CASES`` fails ``test_every_builtin_model_has_a_case``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import mlflow_client

import trainforge
from trainforge import manager
from trainforge.training.data import sample_rows

# model -> (dataset, overrides): tiny but real fits on data trainforge ships
CASES = {
    "mlp": ("iris", ["trainer.epochs=3"]),
    "cnn": ("digits", ["trainer.epochs=1", "model.filters1=8", "model.filters2=8", "model.dense=16"]),
    "rnn": ("sunspots", ["trainer.epochs=2", "model.hidden_size=8", "dataset.window=12"]),
    "lstm": ("digits", ["trainer.epochs=1", "model.hidden_size=16"]),  # rows of an image as 8 steps
    "gru": ("sunspots", ["trainer.epochs=2", "model.hidden_size=8", "dataset.window=12"]),
    "autoencoder": ("digits", ["trainer.epochs=2", "model.kind=conv", "model.filters=[4,8]"]),
    "gan": ("digits", ["trainer.epochs=1", "model.hidden=16"]),
    "random-forest": ("wine", ["model.n_estimators=10"]),
    "gradient-boosting": ("diabetes", ["model.n_estimators=10"]),
    "logistic-regression": ("wine", []),
    "linear-svm": ("wine", []),
}


def builtin_models() -> list[str]:
    return sorted(e.spec.name for e in manager.entries("model") if e.plugin.startswith("trainforge.plugins."))


def test_every_builtin_model_has_a_case():
    assert builtin_models() == sorted(CASES)


def _in_process(model, x: np.ndarray, meta) -> dict[str, np.ndarray]:
    """What the in-process model predicts for raw rows ``x`` (or latent codes for a generator)."""
    if not isinstance(model, torch.nn.Module):  # a fitted scikit-learn estimator
        flat = x.reshape(len(x), -1)
        if meta.task == "classification":
            return {"probabilities": model.predict_proba(flat)}
        return {"values": np.asarray(model.predict(flat)).reshape(len(x), -1)}
    model = model.cpu().eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(x)).numpy()
    if meta.task == "classification":
        return {"probabilities": torch.softmax(torch.from_numpy(out), 1).numpy()}
    return {"values": out.reshape(len(x), -1)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_trains_exports_and_predicts(name, workdir, cli):
    dataset, overrides = CASES[name]
    result = trainforge.train(model__name=name, dataset__name=dataset, overrides=[*overrides, "trainer.patience=0"],
                              quiet=True)

    run = mlflow_client(workdir).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == name and any(k.startswith("test_") for k in run.data.metrics)
    assert result.parity and max(result.parity.values()) <= 1e-4  # the export gate passed
    from trainforge.exporting.exporter import read_metadata

    meta_onnx = read_metadata(result.onnx_path)
    assert meta_onnx["model"] == name and meta_onnx["mlflow_run_id"] == result.run_id

    bundle = trainforge.run.api.load_data(result.config)  # the same split, re-created from the config
    meta = bundle.meta
    if getattr(result.model, "generative", False):
        x = result.model.example_input(12).numpy()
    else:
        x = sample_rows(bundle.test, 40)
    np.save(workdir / "rows.npy", x)
    cli("predict", result.onnx_path, "--input", "rows.npy", "--output", "pred.csv", "--provider", "cpu")
    frame = pd.read_csv(workdir / "pred.csv")
    assert len(frame) == len(x)
    expected = _in_process(result.model, x, meta)
    if "probabilities" in expected:
        probs = frame[[f"prob_{c}" for c in meta.class_names]].to_numpy()
        np.testing.assert_allclose(probs, expected["probabilities"], atol=1e-4)
        labels = np.asarray(meta.class_names)[expected["probabilities"].argmax(1)]
        assert (frame["prediction"].astype(str).to_numpy() == labels).mean() >= 0.97  # ties may flip
    else:
        np.testing.assert_allclose(frame.to_numpy(), expected["values"], rtol=1e-4, atol=1e-4)
