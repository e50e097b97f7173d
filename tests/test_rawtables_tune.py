"""Raw tables in a study: ``tune`` on the messy CSV (missing cells, a category, free text, a constant, an
identifier, string labels), its best model exported with the preprocessing in front (the study-best file
and ``export --study`` both take raw rows), and ``predict`` of raw rows giving the best trial's own labels."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import last_json
from test_rawtables import _torch_labels, messy_frame

from trainforge.tuning.study import DEFAULT_STORAGE

TABLE = ("--dataset", "csv", "-p", "dataset.path=messy.csv", "-p", "dataset.target=target", "--n-trials", "2",
         "--quiet", "--json")


def _raw_rows() -> pd.DataFrame:
    """Rows the model never saw, with empty cells, an unseen ``site`` and empty text."""
    rows = messy_frame(seed=1, rows=60).drop(columns="target")
    rows.loc[rows.index[:5], "site"] = "atlantis"
    rows.loc[rows.index[5:10], "mean radius"] = np.nan
    rows.loc[rows.index[10:15], "note"] = ""
    return rows


def _inputs(path: str) -> dict[str, str]:
    return {i.name: i.type for i in ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()}


def _predict(cli, model: str, rows: pd.DataFrame) -> np.ndarray:
    rows.to_csv("raw.csv", index=False)
    cli("predict", model, "--input", "raw.csv", "--output", "pred.csv", "--provider", "cpu")
    return pd.read_csv("pred.csv")["prediction"].astype(str).to_numpy()


def _trials(study: str) -> list:
    import optuna

    from trainforge.tuning import study as study_mod

    return optuna.load_study(study_name=study, storage=study_mod.open_storage(DEFAULT_STORAGE)).trials


def test_mlp_study_on_a_raw_table_exports_a_raw_row_graph(cli, workdir):
    """Was: the study-best file took the encoded ``input`` features (the rebuilt model lost the table's
    preprocessing), so it did not take the rows the user has."""
    messy_frame(rows=200).to_csv("messy.csv", index=False)
    # seeded, 10 epochs: an unseeded 2-epoch study of a random architecture can sit at chance (0.475 seen once)
    out = last_json(cli("tune", "--model", "mlp", *TABLE, "--epochs", "10", "--seed", "0", "--study", "raw").output)
    assert out["n_complete"] == 2 and out["test_metrics"]["test_accuracy"] > 0.5, out
    best = out["onnx_path"]
    inputs = _inputs(best)
    assert inputs["site"] == "tensor(string)" and inputs["mean radius"] == "tensor(float)" and "input" not in inputs
    rows = _raw_rows()
    expected = _torch_labels({"run_id": out["best_run_id"]}, rows)  # the best trial's checkpoint, in torch
    assert (_predict(cli, best, rows) == expected).all()
    cli("export", "--study", "raw", "--output", "again.onnx")  # re-exported from the best trial's run
    assert _inputs("again.onnx") == inputs
    assert (_predict(cli, "again.onnx", rows) == expected).all()


def test_estimator_study_on_a_raw_table_scores_and_exports_raw_rows(cli, workdir):
    """Was: the study's best file was scored on the encoded test features, and onnxruntime refused them
    (``Required inputs ([...]) are missing``)."""
    from trainforge.estimators.kind import MODEL_FILE, load_estimator
    from trainforge.run.api import load_data
    from trainforge.tracking import store
    from trainforge.tracking.runconfig import run_config

    messy_frame(rows=200).to_csv("messy.csv", index=False)
    out = last_json(cli("tune", "--model", "logistic-regression", *TABLE, "--study", "lr").output)
    assert out["n_complete"] == 2 and out["test_metrics"]["test_accuracy"] > 0.8, out
    assert _inputs(out["onnx_path"])["note"] == "tensor(string)"
    rows = _raw_rows()
    estimator = load_estimator(store.download(out["best_run_id"], MODEL_FILE))
    meta = load_data(run_config(out["best_run_id"])).meta  # the preprocessing re-fitted on the same training rows
    expected = np.asarray(meta.class_names)[estimator.predict(meta.table.transform(rows))]
    assert (_predict(cli, out["onnx_path"], rows) == expected).all()
    cli("export", "--study", "lr", "--output", "again.onnx")
    assert (_predict(cli, "again.onnx", rows) == expected).all()


def test_accuracy_and_latency_study_times_the_raw_row_graph(cli, workdir):
    """Was: every trial failed, the latency timer fed the encoded features to the raw columns' graph."""
    from trainforge.tracking import store

    messy_frame(rows=200).to_csv("messy.csv", index=False)
    out = last_json(cli("tune", "--model", "mlp", *TABLE, "--epochs", "1", "--study", "mo", "--objective",
                        "val_accuracy", "--objective", "latency_ms", "--no-export").output)
    trials = _trials("mo")
    assert out["n_complete"] == 2 and len(out["pareto"]) >= 1, out
    for trial in trials:
        run = store.get_run(trial.user_attrs["mlflow_run_id"])
        assert trial.values[1] == pytest.approx(run.data.metrics["latency_ms_p50"]) and trial.values[1] > 0
        assert run.data.metrics["model_bytes"] > 1000  # the file timed holds the preprocessing (TF-IDF, one-hot)
