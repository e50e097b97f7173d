"""The example plugin package, pip-installed for real: discovered through its entry points, then it
trains, exports and predicts through the ``trainforge`` command (entry points load per process, so
every step is a subprocess)."""

from __future__ import annotations

import importlib
import json
import os
import re
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
    """``pip install --target`` a copy of the package into a temporary folder that only this module's
    processes see (on ``PYTHONPATH``, where entry points are discovered too). Nothing enters the shared
    environment, so a killed test leaves no package installed behind it."""
    base = tmp_path_factory.mktemp("example-plugin")
    source, target = base / "pkg", base / "site"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(source))
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(target), *([previous] if previous else [])])
    sys.path.insert(0, str(target))
    try:
        yield DIST
    finally:
        sys.path.remove(str(target))
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


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
    # the accuracy the package's README documents for exactly this command (a linear model stays near 0.85)
    documented = float(re.search(r"test accuracy \*\*([0-9.]+)\*\*", (PACKAGE / "README.md").read_text()).group(1))
    assert documented > 0.9 and test_accuracy >= documented - 0.02
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
