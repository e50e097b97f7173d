"""The example plugin package, pip-installed for real: discovered through its entry points, then it
trains, exports and predicts through the ``trainforge`` command (entry points load per process, so
every step is a subprocess)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import last_json

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "trainforge-example-plugin"
DIST, VERSION = "trainforge-example-plugin", "0.1.0"
NAMES = {("model", "example-resmlp"), ("optimizer", "example-lion"), ("dataset", "example-moons")}


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install`` a copy of the package (the build writes build/ and *.egg-info next to the sources)
    into this interpreter's environment, and uninstall it afterwards whatever happens."""
    source = tmp_path_factory.mktemp("example-plugin") / "pkg"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(source))
    try:
        assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
        yield DIST
    finally:
        _pip("uninstall", "--yes", DIST)


def test_not_listed_before_install(run_cli):
    rows = json.loads(run_cli("plugins", "--json").stdout)
    assert not {(r["kind"], r["name"]) for r in rows} & NAMES


def test_installed_plugins_are_listed_with_distribution_and_version(installed, run_cli):
    rows = json.loads(run_cli("plugins", "--json").stdout)
    ours = {(r["kind"], r["name"]): r for r in rows if r["distribution"] == DIST}
    assert set(ours) == NAMES
    assert {r["version"] for r in ours.values()} == {VERSION}
    assert {r["plugin"] for r in ours.values()} == {"example-models", "example-optimizers", "example-datasets"}
    text = run_cli("plugins").stdout
    assert "example-resmlp" in text and f"[{DIST} {VERSION}]" in text


def test_installed_model_trains_exports_and_predicts(installed, run_cli, workdir):
    train = last_json(run_cli("train", "--model", "example-resmlp", "--optimizer", "example-lion",
                              "--dataset", "example-moons", "--lr", "0.003", "--epochs", "15", "--patience", "0",
                              "--no-export", "--quiet", "--json").stdout)  # `export` below makes the ONNX file
    run_id, test_accuracy = train["run_id"], train["metrics"]["test_accuracy"]
    assert test_accuracy >= 0.8  # two moons with noise 0.2: a linear model stays near 0.85
    assert train["config"]["optimizer"]["name"] == "example-lion"

    exported = last_json(run_cli("export", run_id, "--output", "moons.onnx", "--json").stdout)
    assert Path(workdir / "moons.onnx").is_file() and max(exported["max_abs_diff"].values()) <= 1e-4

    # the run's test rows, re-created in this process from the installed package's loader (same rows, seed)
    importlib.invalidate_caches()
    from trainforge_example_plugin.datasets import load_moons

    from trainforge.training import data as data_mod

    bundle = data_mod.split_arrays("example-moons", load_moons(), train["config"]["trainer"])
    data_mod.write_split(bundle, "test", str(workdir / "test.csv"))
    summary = last_json(run_cli("predict", "moons.onnx", "--input", "test.csv", "--output", "pred.csv",
                                "--target", "target", "--json").stdout)
    assert summary["rows"] == 120 and summary["metrics"]["accuracy"] == pytest.approx(test_accuracy)
    predictions = pd.read_csv(workdir / "pred.csv")
    assert set(predictions["prediction"]) <= {"upper", "lower"}
    assert list(predictions.columns) == ["prediction", "prob_upper", "prob_lower"]
