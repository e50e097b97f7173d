"""``trainforge explain``: attributions on planted signals (a table whose label depends on two named columns,
images whose class is a bright patch), the checks, and what lands on the run. Real training, real MLflow
store, real onnxruntime sessions; tiny data and few rows so the file stays fast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import last_json, mlflow_client

import trainforge

SIGNAL = ("income", "age")
#: small explanation settings: rows explained, SHAP background, permutation shuffles
SMALL = ("--rows", "40", "--background", "20", "--repeats", "2")


def _planted_table(path, n=400, seed=0):
    """Label = income + age > 0; four noise columns besides."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 6)), columns=[*SIGNAL, "noise_a", "noise_b", "noise_c", "noise_d"])
    frame["label"] = np.where(frame["income"] + frame["age"] > 0, "yes", "no")
    frame.to_csv(path, index=False)


def _train(cli, model, *extra):
    return last_json(cli("train", "--model", model, "--dataset", "csv", "-p", "dataset.path=table.csv",
                         "-p", "dataset.target=label", "--device", "cpu", "--quiet", "--json", *extra).output)


@pytest.fixture
def table(workdir):
    _planted_table(workdir / "table.csv")
    return workdir


@pytest.mark.parametrize("model, extra", [("mlp", ("--epochs", "30", "--lr", "0.01")),
                                          ("random-forest", ("-p", "model.n_estimators=40"))])
def test_planted_table_ranks_the_two_signal_columns_first(cli, table, model, extra):
    run = _train(cli, model, *extra)
    out = last_json(cli("explain", run["run_id"], "--json", "--log-to-run", *SMALL).output)
    methods = {"permutation", "shap", "integrated-gradients"} if model == "mlp" else {"permutation", "shap"}
    assert set(out["importance"]) == methods
    for method, values in out["importance"].items():
        ranked = sorted(values, key=lambda f: -values[f])
        assert set(ranked[:2]) == set(SIGNAL), (method, values)
    checks = out["checks"]
    assert checks["shap_additivity_error"] <= 1e-4
    for method in methods:
        assert checks[f"{method.replace('-', '_')}_randomisation_spearman"] < 0.5, checks
    if model == "mlp":
        assert checks["ig_completeness_gap"] <= 0.01
        assert out["settings"]["integrated-gradients"]["n_steps"] >= 50
        assert checks["agreement_top1"] in (0.0, 1.0)
    assert out["warnings"] == []
    assert out["calls"]["shap"] > 0 and out["settings"]["shap"]["background_rows"] == 20

    logged = mlflow_client(table).get_run(run["run_id"]).data.metrics
    assert logged["explain_shap_additivity_error"] == pytest.approx(checks["shap_additivity_error"])
    assert logged["explain_shap_randomisation_spearman"] < 0.5
    names = {f.path for f in mlflow_client(table).list_artifacts(run["run_id"], "explain")}
    assert {"explain/importance.csv", "explain/shap_values.npy", "explain/shap_background.npy",
            "explain/importance.png", "explain/beeswarm.png"} <= names


def test_input_rows_and_output_csv(cli, table):
    run = _train(cli, "mlp", "--epochs", "5")
    pd.read_csv(table / "table.csv").head(12).to_csv(table / "rows.csv", index=False)
    cli("explain", f"runs:/{run['run_id']}", "--input", "rows.csv", "-m", "shap", "-m", "integrated-gradients",
        "--background", "10", "--no-randomisation", "--output", "attr.csv", "--json")
    attr = pd.read_csv(table / "attr.csv")
    assert len(attr) == 12 * 6 and list(attr.columns) == ["row", "feature", "shap", "integrated-gradients"]
    assert set(attr["feature"]) == {*SIGNAL, "noise_a", "noise_b", "noise_c", "noise_d"}


def test_failed_check_is_a_warning_naming_it(table, cli, monkeypatch):
    """IG with two steps cannot add up on a nonlinear MLP: the completeness check fails, loudly."""
    from trainforge.explaining import methods

    run = _train(cli, "mlp", "--epochs", "3")
    monkeypatch.setattr(methods, "IG_STEPS", 2)
    monkeypatch.setattr(methods, "IG_MAX_STEPS", 2)
    result = cli("explain", run["run_id"], "-m", "integrated-gradients", "--rows", "20", "--no-randomisation")
    assert "warning: check ig_completeness_gap failed" in result.output
    assert "raise the step cap" in result.output


def test_budget_refuses_in_one_line(cli, table):
    run = _train(cli, "mlp", "--epochs", "2")
    result = cli("explain", run["run_id"], "--budget", "1000", ok=False)
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert "model calls" in line and "over --budget 1,000" in line and "--rows" in line


def test_bad_method_for_the_model_is_one_line(cli, table):
    run = _train(cli, "random-forest", "-p", "model.n_estimators=5")
    result = cli("explain", run["run_id"], "-m", "integrated-gradients", ok=False)
    assert result.exit_code == 1 and "needs a torch model" in result.output
    assert "Traceback" not in result.output


# -- images ---------------------------------------------------------------------------------------------------------

PATCH = (slice(1, 4), slice(4, 7))


def load_patches(n=240):
    """1x8x8 noise images; class 1 has a bright 3x3 patch at rows 1-3, columns 4-6."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
    y = np.arange(n) % 2
    x[y == 1, 0, PATCH[0], PATCH[1]] += 1.0
    return trainforge.ArrayData(x, y.astype(np.int64), task="classification", class_names=["plain", "patch"])


class PatchPlugin:
    @trainforge.hookimpl
    def register_datasets(self, register):
        register(trainforge.DatasetSpec(name="planted-patch", load=load_patches, tasks={"classification"},
                                        description="noise images, class 1 has a bright patch"))


def test_planted_patch_holds_the_positive_ig_mass(fresh_plugins, cli, workdir):
    fresh_plugins.register_plugin(PatchPlugin(), name="planted-patch")
    try:
        run = last_json(cli("train", "--model", "cnn", "--dataset", "planted-patch", "--epochs", "4", "--device",
                            "cpu", "--quiet", "--json").output)
        out = last_json(cli("explain", run["run_id"], "-m", "integrated-gradients", "-m", "occlusion", "--rows", "40",
                            "--output", "attr.csv", "--log-to-run", "--json").output)
        from trainforge.explaining.subject import load_subject

        labels = load_subject(run["run_id"], rows=40).y  # the test rows explained
    finally:
        fresh_plugins.unregister_plugin("planted-patch")
    attr = pd.read_csv(workdir / "attr.csv")
    ig = attr["integrated-gradients"].to_numpy().reshape(40, 1, 8, 8)
    inside = np.zeros((8, 8), bool)
    inside[PATCH] = True
    positive = np.clip(ig[labels == 1, 0], 0, None)  # patch images, their (predicted) patch class explained
    assert 5 <= (labels == 1).sum() <= 35
    assert positive[:, inside].sum() / positive.sum() >= 0.5
    assert out["checks"]["ig_completeness_gap"] <= 0.01
    assert out["checks"]["integrated_gradients_randomisation_spearman"] < 0.5, out["checks"]
    names = {f.path for f in mlflow_client(workdir).list_artifacts(run["run_id"], "explain")}
    assert "explain/image_grid.png" in names
    assert out["rows"] == 40
