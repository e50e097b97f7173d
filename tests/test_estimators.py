"""scikit-learn estimators: fitted (not trained by epochs), tracked like any run, exported by skl2onnx
behind the same input/outputs/metadata contract, served by the same ``trainforge predict``."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import last_json, mlflow_client

import trainforge
from trainforge.exporting.exporter import read_metadata
from trainforge.run.api import load_data

TORCH_METADATA = {"task", "input_name", "input_shape", "input_dtype", "outputs", "class_names", "feature_names",
                  "normalization", "version", "mlflow_run_id", "model", "dataset", "opset", "parity_max_abs_diff",
                  "part"}


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    root = tmp_path_factory.mktemp("forest")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = trainforge.train(model__name="random-forest", dataset__name="iris", quiet=True)
    return root, result


def test_random_forest_on_iris(forest):
    root, result = forest
    assert result.metrics["test_accuracy"] >= 0.93
    assert result.best_epoch == result.epochs_run == 1
    run = mlflow_client(root).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trainforge.fit"] == "estimator"
    assert run.data.params["model.n_estimators"] == "100" and run.data.params["data.test_size"] == "30"
    assert {"train_accuracy", "val_accuracy", "test_accuracy", "test_f1"} <= set(run.data.metrics)
    paths = {a.path for folder in ("checkpoints", "plots", "onnx")
             for a in mlflow_client(root).list_artifacts(result.run_id, folder)}
    assert {"checkpoints/estimator.skops", "plots/confusion_matrix.png", "onnx/model.onnx"} <= paths


def test_forest_onnx_predicts_the_same_labels_on_every_test_row(forest, cli, workdir):
    root, result = forest
    test = load_data(result.config).test
    x = test.x.numpy()
    session = ort.InferenceSession(result.onnx_path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    labels, probs = session.run(None, {"input": x})
    np.testing.assert_array_equal(labels, result.model.predict(x))
    np.testing.assert_allclose(probs, result.model.predict_proba(x), atol=1e-5)
    meta = read_metadata(result.onnx_path)
    assert TORCH_METADATA <= set(meta) and meta["task"] == "classification" and meta["estimator"] == \
        "RandomForestClassifier"
    # the same `trainforge predict`, on a CSV with named columns and the true labels
    frame = pd.DataFrame(x, columns=meta["feature_names"])
    frame["target"] = np.asarray(meta["class_names"])[test.y.numpy()]
    frame.to_csv(workdir / "iris_test.csv", index=False)
    summary = last_json(cli("predict", result.onnx_path, "--input", "iris_test.csv", "--target", "target",
                            "--output", "pred.csv", "--json").output)
    predicted = pd.read_csv(workdir / "pred.csv")["prediction"].to_numpy()
    np.testing.assert_array_equal(predicted, np.asarray(meta["class_names"])[result.model.predict(x)])
    assert summary["metrics"]["accuracy"] == pytest.approx(result.metrics["test_accuracy"])


def test_forest_run_re_exports(forest, cli, workdir, monkeypatch):
    root, result = forest
    monkeypatch.chdir(root)
    report = last_json(cli("export", result.run_id, "--output", str(workdir / "again.onnx"), "--json").output)
    assert max(report["max_abs_diff"].values()) <= 1e-4
    assert read_metadata(workdir / "again.onnx")["mlflow_run_id"] == result.run_id
