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


def test_forest_vote_ties_export_with_the_estimator_labels(tmp_path, monkeypatch):
    """Issue 23's defect: a 50/50 vote of a random forest is an exact tie that scikit-learn gives to the
    first class; the float32 tree graph returned 0.49999994/0.50000006 and the other label. The graph now
    sums in float64 and its label is the ArgMax of the probabilities; the float32 graph is refused with a
    message saying how many rows differ and by how much."""
    from sklearn.ensemble import RandomForestClassifier

    from trainforge.contracts import DataMeta
    from trainforge.errors import ExportError
    from trainforge.estimators import kind

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(20, random_state=0, n_jobs=1).fit(x[:400], y[:400])
    ties = x[400:][forest.predict_proba(x[400:])[:, 0] == 0.5]
    assert len(ties) >= 1
    meta = DataMeta("planted", "classification", (8,), 2, ["no", "yes"], None, np.zeros(8), np.ones(8))
    report = kind.export_estimator(forest, meta, ties, tmp_path / "forest.onnx")
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    labels, probs = session.run(None, {"input": ties})
    np.testing.assert_array_equal(labels, forest.predict(ties))
    np.testing.assert_array_equal(probs.argmax(1), forest.predict(ties))  # what trainforge predict writes
    monkeypatch.setattr(kind, "double_precision", lambda estimator: False)
    with pytest.raises(ExportError, match=r"labels differ from the estimator's on \d+ of \d+ rows "
                                          r"\(max \|Δ probability\| [0-9.e-]+ there"):
        kind.export_estimator(forest, meta, ties, tmp_path / "float32.onnx")
    assert not (tmp_path / "float32.onnx").exists()
