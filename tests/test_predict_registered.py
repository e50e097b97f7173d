"""``trainforge predict models:/NAME/VERSION`` (and ``@alias``) on the model a study registers (``study-best``):
the same predictions as ``runs:/`` of its run, and a damaged ONNX file in the artifact store refused with one
line (its SHA-256 differs from the one the run recorded at export)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import last_json, mlflow_client
from faults import no_partial_files, one_line, tf


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A two-trial study on iris: its best model is exported on the study's run and registered as ``s`` v1.

    Seeded (``--seed 0``): without a sampler seed the study is not reproducible (even its enqueued trial 0
    changes from one run to the next), and a 2-epoch model sat at chance, so an "accuracy > 0.5" check failed
    about one run in three whatever ran before it (issue 26)."""
    root = tmp_path_factory.mktemp("registered")
    done = tf(root, "tune", "--model", "mlp", "--dataset", "iris", "--epochs", "10", "--n-trials", "2", "--study", "s",
              "--seed", "0", "--quiet", "--json")
    assert done.returncode == 0, done.stderr
    summary = last_json(done.stdout)
    assert summary["model_version"] == "1"
    data = tf(root, "data", "--dataset", "iris", "--split", "test", "-o", "test.csv")
    assert data.returncode == 0, data.stderr
    client = mlflow_client(root)
    client.set_registered_model_alias("s", "champion", "1")
    source = client.get_model_version("s", "1").run_id
    return root, source, summary["test_metrics"]["test_accuracy"]


def _registered_file(root: Path) -> Path:
    """The ONNX file inside the registered pyfunc model, as the artifact store holds it."""
    (path,) = (root / "mlruns").rglob("models/m-*/artifacts/artifacts/model.onnx")
    return path


def test_models_uri_predicts_like_runs_uri(registered, workdir):
    root, source, accuracy = registered
    assert accuracy > 0.6  # a trained model, far from chance (1/3)
    outputs = {}
    for uri in (f"runs:/{source}", "models:/s/1", "models:/s@champion"):
        out = workdir / f"{len(outputs)}.csv"
        done = tf(root, "predict", uri, "-i", "test.csv", "-o", str(out), "--target", "target", "--json")
        assert done.returncode == 0, done.stderr
        assert last_json(done.stdout)["metrics"]["accuracy"] == pytest.approx(accuracy)  # the study's test split
        outputs[uri] = out.read_text()
    assert len(set(outputs.values())) == 1, "models:/ predicted differently from runs:/"
    assert len(outputs["models:/s/1"].splitlines()) == 31  # header + the 30 test rows


@pytest.mark.parametrize("uri", ["models:/s/1", "models:/s@champion"])
def test_damaged_registered_onnx_is_refused(registered, workdir, uri):
    root, source, _ = registered
    path = _registered_file(root)
    original = path.read_bytes()
    data = bytearray(original)
    middle = len(data) // 2
    data[middle:middle + 200] = os.urandom(200)  # can still pass onnx.checker and predict other labels
    (workdir / "out.csv").write_text("GOOD\n")
    try:
        path.write_bytes(bytes(data))
        done = tf(root, "predict", uri, "-i", "test.csv", "-o", str(workdir / "out.csv"))
    finally:
        path.write_bytes(original)
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert f"{uri}: artifacts/model.onnx does not match the SHA-256 recorded at export in run {source}" in line
    assert (workdir / "out.csv").read_text() == "GOOD\n"
    no_partial_files(workdir)


def test_unknown_version_is_one_line(registered):
    root, _, _ = registered
    done = tf(root, "predict", "models:/s/7", "-i", "test.csv")
    assert done.returncode == 1
    assert "models:/s/7: Model Version (name=s, version=7) not found" in one_line(done.stderr)
