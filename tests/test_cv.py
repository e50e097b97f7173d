"""Cross-validation: folds over the non-test rows, ``train --cv K`` (parent, fold and refit runs) and the
``compare`` leaderboard. Real data (scikit-learn's wine), real MLflow store, real onnxruntime; 2-3 folds,
2 epochs. The end-to-end commands run once (one module-scoped store, :func:`cv_runs`) and several tests read
what they left."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import last_json, mlflow_client

from trainforge.config import resolve
from trainforge.errors import ConfigError
from trainforge.training.data import split_indices
from trainforge.training.folds import load_folds, make_folds


def _trainer(**over):
    return {**resolve({})["trainer"], **over}


def test_stratified_folds_hold_the_class_proportions_and_never_the_test_rows():
    cfg = resolve({"dataset": {"name": "wine"}})
    data = load_folds(cfg["dataset"], cfg["trainer"], 3)
    folds = data.folds
    assert folds.kind == "stratified" and len(folds) == 3
    from sklearn.datasets import load_wine

    y = load_wine().target
    plain_test = split_indices("wine", len(y), y, True, cfg["trainer"])[2]
    assert sorted(folds.test) == sorted(plain_test)  # the test split is the one a plain run draws
    vals = np.concatenate([v for _, v in folds.folds])
    assert sorted(vals) == sorted(folds.rest) and len(set(vals)) == len(vals)  # each non-test row validates once
    assert not set(folds.test) & set(folds.rest)
    whole = np.bincount(y[folds.rest]) / len(folds.rest)
    for train, val in folds.folds:
        assert not set(train) & set(val)
        assert np.all(np.abs(np.bincount(y[val], minlength=3) - whole * len(val)) <= 1.0)
    # each fold standardizes on its own training rows
    assert len(data.bundles[0].train) == len(folds.folds[0][0])
    assert not np.allclose(data.bundles[0].meta.mean, data.bundles[1].meta.mean)
    assert len(data.refit.train) == len(folds.rest) and len(data.refit.test) == len(folds.test)


def test_forward_group_and_plain_folds():
    y = np.arange(60, dtype=np.float64)
    forward = make_folds("t", y, 3, _trainer(), stratify=False, ordered=True, gap=2)
    assert forward.kind == "forward" and forward.test.min() > forward.rest.max() + 2
    for train, val in forward.folds:  # forward chaining: train strictly before val, with the gap
        assert train.max() + 2 < val.min()
    groups = np.repeat(np.arange(12), 5)
    grouped = make_folds("t", y, 3, _trainer(), stratify=False, groups=groups)
    assert grouped.kind == "group"
    for train, val in grouped.folds:
        assert not set(groups[train]) & set(groups[val])
    assert make_folds("t", y, 4, _trainer(), stratify=False).kind == "kfold"


def test_bad_fold_counts_are_one_line_errors():
    y = np.array([0] * 40 + [1] * 4)
    with pytest.raises(ConfigError, match="at least 2 folds"):
        make_folds("t", y, 1, _trainer(), stratify=True)
    with pytest.raises(ConfigError, match="fewer than the 5 folds"):
        make_folds("t", y, 5, _trainer(test_fraction=0.25), stratify=True)


def test_corrected_t_test_inflates_the_plain_paired_variance():
    from scipy import stats

    from trainforge.cv.stats import corrected_t_test, summarize

    a, b = [0.91, 0.83, 0.88, 0.95, 0.86], [0.85, 0.84, 0.80, 0.90, 0.83]
    test = corrected_t_test(a, b, n_train=80, n_val=20)
    plain = stats.ttest_rel(a, b)
    # Nadeau & Bengio: variance factor (1/K + n_val/n_train) instead of 1/K -> t shrinks by sqrt(1 + K * ratio)
    assert test.t == pytest.approx(plain.statistic / np.sqrt(1 + 5 * 20 / 80))
    assert test.p_value > plain.pvalue
    assert corrected_t_test(a, a, 80, 20).within_noise
    s = summarize([{"val_accuracy": 0.8}, {"val_accuracy": 0.9}])
    assert s["cv_val_accuracy_mean"] == pytest.approx(0.85) and s["cv_val_accuracy_std"] == pytest.approx(0.0707, 1e-3)


@pytest.fixture(scope="module")
def cv_runs(tmp_path_factory):
    """In one store: ``train --cv 2`` of an mlp (2 epochs), ``compare --model random-forest,logistic-regression
    --cv 2`` (estimators: fitted once, half the time of mlp rows; the mlp's cv path is train's) and the test
    rows as CSV (``data --split test`` of the refit run: the same test split for every model)."""
    from trainforge.cli.main import cli as command

    root = tmp_path_factory.mktemp("cv")

    def invoke(*args):
        result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=True)
        assert result.exit_code == 0, f"trainforge {' '.join(map(str, args))}: {result.output}\n{result.exception!r}"
        return result.output

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        trained = last_json(invoke("train", "--model", "mlp", "--dataset", "wine", "--cv", "2", "--epochs", "2",
                                   "--experiment", "cv-wine", "--json", "-q"))
        board = last_json(invoke("compare", "--model", "random-forest,logistic-regression", "--dataset", "wine",
                                 "--cv", "2", "--epochs", "2", "-p", "trainer.monitor=val_accuracy",
                                 "--experiment", "leaderboard", "--register", "wine-best", "--json"))
        client = mlflow_client(root)
        refit = client.get_run(trained["run_id"]).data.tags["trainforge.refit_run_id"]
        invoke("data", "--run", refit, "--split", "test", "--output", "test.csv")

        def predict(onnx_path):
            return last_json(invoke("predict", onnx_path, "--input", "test.csv", "--target", "target", "--json"))

        yield {"root": root, "client": client, "train": trained, "board": board, "predict": predict}
        import mlflow

        mlflow.set_tracking_uri(None)


def test_train_cv_makes_parent_fold_and_refit_runs(cv_runs):
    result, client = cv_runs["train"], cv_runs["client"]
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["trainforge.role"] == "cv"
    m = parent.data.metrics
    assert {"cv_val_accuracy_mean", "cv_val_accuracy_std", "cv_val_loss_mean", "fold1_val_accuracy",
            "test_accuracy"} <= set(m)
    folds = [f["metrics"]["val_accuracy"] for f in result["folds"]]
    assert m["cv_val_accuracy_mean"] == pytest.approx(np.mean(folds))
    assert m["cv_val_accuracy_std"] == pytest.approx(np.std(folds, ddof=1))
    assert client.get_experiment(parent.info.experiment_id).name == "cv-wine"
    # the fold and refit runs sit in the parent's experiment (the MLflow UI nests them only there)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["trainforge.role"] for r in children) == ["fold", "fold", "refit"]
    refit = client.get_run(parent.data.tags["trainforge.refit_run_id"])
    assert refit.data.params["trainer.patience"] == "0"
    assert refit.data.params["trainer.epochs"] == str(int(m["refit_epochs"]))


def test_the_folds_artifact_holds_stratified_folds_within_one_row_of_the_class_proportions(cv_runs):
    from sklearn.datasets import load_wine

    client, run_id = cv_runs["client"], cv_runs["train"]["run_id"]
    indices = json.loads(open(client.download_artifacts(run_id, "folds.json")).read())
    assert len(indices["folds"]) == 2 and indices["kind"] == "stratified"
    y = load_wine().target
    rest = np.concatenate([f["val"] for f in indices["folds"]])
    assert not set(rest) & set(indices["test"]) and len(rest) + len(indices["test"]) == len(y)
    whole = np.bincount(y[rest]) / len(rest)
    for fold in indices["folds"]:
        assert np.all(np.abs(np.bincount(y[fold["val"]], minlength=3) - whole * len(fold["val"])) <= 1.0)


def test_predict_on_the_refit_onnx_gives_the_parents_test_accuracy(cv_runs):
    result = cv_runs["train"]
    test_accuracy = cv_runs["client"].get_run(result["run_id"]).data.metrics["test_accuracy"]
    assert cv_runs["predict"](result["onnx_path"])["metrics"]["accuracy"] == pytest.approx(test_accuracy, abs=1e-6)


def test_compare_ranks_models_on_the_same_folds(cv_runs):
    board, client = cv_runs["board"], cv_runs["client"]
    rows = board["leaderboard"]
    assert {r["model"] for r in rows} == {"random-forest", "logistic-regression"}
    assert [r["cv_mean"] for r in rows] == sorted((r["cv_mean"] for r in rows), reverse=True)
    for r in rows:
        assert len(r["fold_scores"]) == 2 and r["onnx_bytes"] > 0 and r["p50_ms_per_row_batch64"] > 0
        assert r["cv_mean"] == pytest.approx(np.mean(r["fold_scores"]))
    assert board["paired_test"]["a"] == rows[0]["model"] and 0 <= board["paired_test"]["p_value"] <= 1
    assert board["registered"] == "wine-best/1"
    arts = {a.path for a in client.list_artifacts(board["run_id"])}
    assert {"leaderboard.csv", "leaderboard.png"} <= arts
    experiment = client.get_run(board["run_id"]).info.experiment_id
    assert client.get_experiment(experiment).name == "leaderboard"
    for r in rows:  # every model's refit run is in the leaderboard's experiment
        assert client.get_run(r["refit_run_id"]).info.experiment_id == experiment


def test_every_leaderboard_onnx_passed_the_gate_and_predicts_its_test_score(cv_runs):
    for row in cv_runs["board"]["leaderboard"]:
        assert row["onnx_path"] and row["refit_run_id"]
        predicted = cv_runs["predict"](row["onnx_path"])["metrics"]["accuracy"]
        assert predicted == pytest.approx(row["test_score"], abs=1e-6), row["model"]
