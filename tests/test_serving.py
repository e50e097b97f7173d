"""MLflow's own serving tools on a registered trainforge model: a real ``mlflow models serve`` process on
loopback, and ``mlflow.pyfunc.load_model`` in process, answer like ``trainforge predict``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import last_json, store_uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register(cli, workdir: Path, dataset: str, name: str) -> tuple[dict, str]:
    """Train an MLP on ``dataset`` (3 epochs) and register its MLflow model as version 1 of ``name``."""
    out = last_json(cli("train", "--model", "mlp", "--dataset", dataset, "--epochs", "3", "--quiet", "--json").output)
    mlflow.set_tracking_uri(store_uri(workdir))
    version = mlflow.register_model(out["model_uri"], name)
    assert str(version.version) == "1"
    return out, f"models:/{name}/1"


def expected(cli, onnx_path: str, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test split's features (named columns, no target) and ``trainforge predict``'s output on it."""
    cli("data", "--dataset", dataset, "--split", "test", "--output", "test.csv")
    features = pd.read_csv("test.csv").drop(columns=["target"])
    cli("predict", onnx_path, "--input", "test.csv", "--output", "pred.csv")
    return features, pd.read_csv("pred.csv")


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns; class names equal, numbers equal to float32 precision."""
    assert list(got.columns) == list(want.columns)
    for col in want.columns:
        if pd.api.types.is_numeric_dtype(want[col]):
            np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-5, atol=1e-6)
        else:
            assert got[col].astype(str).tolist() == want[col].astype(str).tolist(), col


def serve_and_post(model_uri: str, workdir: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Start ``mlflow models serve`` (own process group), POST ``dataframe_split``, stop the whole group."""
    port = free_port()
    # MLflow starts `uvicorn` by name: the environment's bin/ must be on PATH, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri(workdir),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                             "local", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow models serve did not come up:\n{proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.5)
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            answer = json.loads(resp.read())
        return pd.DataFrame(answer["predictions"])
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session``), SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["iris", "diabetes"])
def test_mlflow_models_serve_answers_like_trainforge_predict(cli, workdir, dataset):
    out, uri = register(cli, workdir, dataset, f"served-{dataset}")
    features, want = expected(cli, out["onnx_path"], dataset)
    if dataset == "iris":
        assert list(want.columns) == ["prediction", "prob_setosa", "prob_versicolor", "prob_virginica"]
    else:
        assert list(want.columns) == ["prediction"]
    # columns in another order than training's: matched by name
    got = serve_and_post(uri, workdir, features[list(reversed(features.columns))])
    assert_same(got, want)

    # in process: the same answer, and a bare array of the feature values too
    model = mlflow.pyfunc.load_model(uri)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == list(features.columns)
    assert_same(model.predict(features), want)
    assert_same(model.unwrap_python_model().predict(None, features.to_numpy(np.float32)), want)
    # what MLflow records for inference: no torch, no trainforge
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    names = {r.split("==")[0] for r in requirements}
    assert {"numpy", "pandas"} <= names and names & {"onnxruntime", "onnxruntime-gpu"}
    assert not names & {"torch", "trainforge"}, requirements


def test_pyfunc_model_code_imports_no_trainforge_or_torch(digits_run, tmp_path):
    """The logged pyfunc loads in a fresh interpreter where trainforge and torch cannot be imported."""
    run = mlflow.tracking.MlflowClient(tracking_uri=digits_run.tracking_uri).get_run(digits_run.run_id)
    uri = run.data.tags["trainforge.model_uri"]
    blocker = tmp_path / "block"
    blocker.mkdir()
    for name in ("trainforge", "torch"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} must not be needed to serve')\n")
    script = (
        "import sys, mlflow, numpy as np, pandas as pd\n"
        f"sys.path.insert(0, {str(blocker)!r})\n"
        "for m in [m for m in sys.modules if m.split('.')[0] in ('trainforge', 'torch')]: del sys.modules[m]\n"
        f"mlflow.set_tracking_uri({digits_run.tracking_uri!r})\n"
        f"model = mlflow.pyfunc.load_model({uri!r})\n"
        "names = [c.name for c in model.metadata.get_input_schema().inputs]\n"
        "out = model.predict(pd.DataFrame(np.zeros((2, len(names))), columns=names))\n"
        "print(list(out.columns)[:2], len(out))\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('trainforge', 'torch')]\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "['prediction', 'prob_0'] 2" in proc.stdout
