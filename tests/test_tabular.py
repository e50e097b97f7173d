"""CSV files written from scikit-learn frames, and regression: train -> export -> predict, task inferred."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import last_json, mlflow_client
from sklearn.datasets import load_diabetes, load_wine
from sklearn.metrics import r2_score

from trainforge.plugins.datasets import infer_task


def _train(cli, *args: str) -> dict:
    # --device cpu / --provider cpu: these compare onnxruntime on the CPU with torch's metrics on the CPU
    return last_json(cli("train", *args, "--device", "cpu", "--quiet", "--json").output)


def _metadata(path: str) -> dict[str, str]:
    raw = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    return {k.removeprefix("trainforge."): v for k, v in raw.items()}


def test_csv_label_column_is_classification(cli, workdir):
    wine = load_wine(as_frame=True)
    frame = wine.data.copy()
    frame["cultivar"] = np.asarray(wine.target_names)[wine.target]  # text labels
    frame.to_csv(workdir / "wine.csv", index=False)

    result = _train(cli, "--model", "mlp", "--dataset", "csv", "-p", "dataset.path=wine.csv",
                    "-p", "dataset.target=cultivar", "--epochs", "30")
    run = mlflow_client(workdir).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["data.task"] == "classification"
    assert run.data.tags["trainforge.task"] == "classification"
    assert "test_accuracy" in result["metrics"] and "test_r2" not in result["metrics"]
    assert result["metrics"]["test_accuracy"] > 0.8
    assert run.data.params["data.input_shape"] == "[13]"

    meta = _metadata(result["onnx_path"])
    assert meta["task"] == "classification"
    assert json.loads(meta["class_names"]) == sorted(wine.target_names)
    assert json.loads(meta["feature_names"]) == list(wine.data.columns)

    # predict on the whole original file: features matched by name, labels compared as text
    out = cli("predict", f"runs:/{result['run_id']}", "--input", "wine.csv", "--target", "cultivar", "--provider", "cpu",
              "--output", "pred.csv", "--json").output
    summary = last_json(out)
    pred = pd.read_csv(workdir / "pred.csv")
    assert summary["rows"] == len(frame) == len(pred)
    assert set(pred["prediction"]) <= set(wine.target_names)
    assert summary["metrics"]["accuracy"] == pytest.approx(float((pred["prediction"] == frame["cultivar"]).mean()))
    assert summary["metrics"]["accuracy"] > 0.8

    # and on the run's own test split it reproduces the logged test accuracy
    cli("data", "--run", result["run_id"], "--split", "test", "--output", "test.csv")
    test = pd.read_csv(workdir / "test.csv")
    assert len(test) == int(run.data.params["data.test_size"])
    summary = last_json(cli("predict", f"runs:/{result['run_id']}", "--input", "test.csv", "--target", "target", "--provider", "cpu",
                            "--json").output)
    assert abs(summary["metrics"]["accuracy"] - run.data.metrics["test_accuracy"]) <= 1e-6


def test_csv_float_target_is_regression(cli, workdir):
    diabetes = load_diabetes(as_frame=True).frame  # ten features and a float "target"
    diabetes.to_csv(workdir / "diabetes.csv", index=False)
    result = _train(cli, "--model", "mlp", "--dataset", "csv", "-p", "dataset.path=diabetes.csv",
                    "-p", "dataset.target=target", "--epochs", "20")
    run = mlflow_client(workdir).get_run(result["run_id"])
    assert run.data.params["data.task"] == "regression"
    assert run.data.tags["trainforge.task"] == "regression"
    assert {"test_mse", "test_mae", "test_r2"} <= set(result["metrics"])
    assert "test_accuracy" not in result["metrics"]
    assert "plots/predicted_vs_actual.png" in {a.path for a in mlflow_client(workdir).list_artifacts(
        result["run_id"], "plots")}
    assert _metadata(result["onnx_path"])["task"] == "regression"

    out = cli("predict", result["onnx_path"], "--input", "diabetes.csv", "--target", "target", "--provider", "cpu",
              "--output", "pred.csv", "--json").output
    summary = last_json(out)
    pred = pd.read_csv(workdir / "pred.csv")
    assert list(pred.columns) == ["prediction"] and len(pred) == len(diabetes)
    err = pred["prediction"].to_numpy() - diabetes["target"].to_numpy()
    assert summary["metrics"]["mse"] == pytest.approx(float(np.mean(err**2)), rel=1e-5)
    assert summary["metrics"]["mae"] == pytest.approx(float(np.mean(np.abs(err))), rel=1e-5)
    # better than predicting the mean: the network learned something on the whole file
    assert summary["metrics"]["mse"] < float(diabetes["target"].var())


def test_builtin_diabetes_regression_and_predict_reproduces_mse(cli, workdir):
    result = _train(cli, "--model", "mlp", "--dataset", "diabetes", "--epochs", "20")
    metrics = result["metrics"]
    assert all(np.isfinite(metrics[k]) for k in ("test_mse", "test_mae", "test_r2"))
    assert all(d <= 1e-4 for d in result["parity_max_abs_diff"].values())
    cli("data", "--run", result["run_id"], "--split", "test", "--output", "test.csv")
    summary = last_json(cli("predict", f"runs:/{result['run_id']}", "--input", "test.csv", "--target", "target",
                            "--provider", "cpu", "--output", "pred.csv", "--json").output)
    logged = mlflow_client(workdir).get_run(result["run_id"]).data.metrics
    assert summary["metrics"]["mse"] == pytest.approx(logged["test_mse"], rel=1e-4)
    assert summary["metrics"]["mae"] == pytest.approx(logged["test_mae"], rel=1e-4)
    # It beats the mean predictor (R2 = 0) by a margin, by scikit-learn's own r2_score on the test rows.
    y = pd.read_csv(workdir / "test.csv")["target"].to_numpy()
    r2 = r2_score(y, pd.read_csv(workdir / "pred.csv")["prediction"].to_numpy())
    assert r2 == pytest.approx(metrics["test_r2"], abs=1e-4)
    assert r2 > 0.2, f"R2 {r2:.3f}: no better than predicting the mean"


def test_csv_task_override_and_feature_subset(cli, workdir):
    """An integral label column is classification unless ``dataset.task`` says otherwise."""
    wine = load_wine(as_frame=True).frame  # integral "target" 0, 1, 2
    wine.to_csv(workdir / "wine.csv", index=False)
    common = ("--model", "mlp", "--dataset", "csv", "-p", "dataset.path=wine.csv", "--epochs", "1", "--no-export")
    classified = _train(cli, *common)  # target defaults to the last column
    assert "test_accuracy" in classified["metrics"]
    regressed = _train(cli, *common, "-p", "dataset.task=regression",
                       "-p", "dataset.features=[alcohol, malic_acid, ash]")
    run = mlflow_client(workdir).get_run(regressed["run_id"])
    assert run.data.params["data.task"] == "regression"
    assert run.data.params["data.input_shape"] == "[3]"
    assert "test_r2" in regressed["metrics"]


@pytest.mark.parametrize("values, task", [
    (["a", "b", "a"], "classification"),
    ([True, False, True], "classification"),
    ([0, 1, 2, 1], "classification"),
    ([1.0, 2.0, 1.0], "classification"),  # integral floats with few values are labels
    ([0.5, 1.25, 3.0], "regression"),
    (list(range(200)), "regression"),  # too many distinct integers for labels
])
def test_infer_task(values, task):
    assert infer_task(pd.Series(values)) == task


@pytest.mark.parametrize("tie_break", ["val_loss", "none"])
def test_ties_of_the_monitored_metric_are_broken_by_validation_loss(tie_break):
    """iris has 15 validation rows: val_accuracy ties between epochs all the time. With the default
    ``tie_break: val_loss`` the kept epoch is the best by (accuracy, then lower loss); without, the first
    epoch that reached the best accuracy."""
    import torch

    from trainforge.run.api import build_config, load_data
    from trainforge.training.modeling import build_model, build_optimizer
    from trainforge.training.tasks import get_task
    from trainforge.training.trainer import Trainer

    cfg = build_config(dataset__name="iris", model__name="mlp", trainer__epochs=40, trainer__patience=0,
                       trainer__monitor="val_accuracy", trainer__tie_break=tie_break, trainer__device="cpu")
    bundle = load_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg["model"], bundle.meta)
    optimizer = build_optimizer({"name": "adam", "lr": 0.01}, model.parameters())
    trainer = Trainer(model, optimizer, get_task("classification"), cfg["trainer"], output_dim=3).fit(bundle)
    acc = [h["val_accuracy"] for h in trainer.history]
    loss = [h["val_loss"] for h in trainer.history]
    tied = [e for e, a in enumerate(acc) if a == max(acc)]
    assert len(tied) > 1, "no tie to break: the test would not test anything"
    expected = min(tied, key=lambda e: loss[e]) if tie_break != "none" else tied[0]
    assert trainer.best_epoch == expected + 1
