"""Shared fixtures: every test runs in its own working directory with its own MLflow store.

Nothing is mocked: the MLflow store is a real SQLite database under the test's ``mlruns/``, ONNX models
run in real onnxruntime sessions, Optuna studies use real storages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from trainforge import manager

BIN = Path(sys.executable).parent


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory whose ``mlruns/`` is the default MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield tmp_path
    import mlflow

    while mlflow.active_run() is not None:  # a failing test must not leak an active run into the next
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # MLflow also exported the URI to os.environ; forget both


@pytest.fixture
def cli(workdir):
    """Invoke the real click command in-process: ``cli("train", "--model", "mlp", ...)`` -> click Result."""
    from trainforge.cli.main import cli as command

    def invoke(*args: str, ok: bool = True):
        result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=True)
        if ok and result.exit_code != 0:
            raise AssertionError(f"trainforge {' '.join(map(str, args))} exited {result.exit_code}:\n"
                                 f"{result.output}\n{result.exception!r}")
        return result

    return invoke


@pytest.fixture
def run_cli(workdir):
    """Run the installed ``trainforge`` console script in a subprocess (the real entry point)."""
    exe = shutil.which("trainforge", path=str(BIN)) or shutil.which("trainforge")
    assert exe, "the trainforge console script is not installed"

    def run(*args: str, check: bool = True, timeout: float = 600,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING", **(env_extra or {})}
        proc = subprocess.run([exe, *map(str, args)], cwd=workdir, capture_output=True, text=True,
                              timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"trainforge {' '.join(map(str, args))} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def default_signals() -> None:
    """``preexec_fn`` for every child a test signals: SIGINT and SIGTERM back to their defaults.

    A process started from a non-interactive shell (a CI script, ``cmd &``, ``trap '' INT``) has SIGINT
    ignored, and its children inherit that: a Ctrl-C test would then test nothing, or fail for the wrong
    reason. Python installs its KeyboardInterrupt handler at start-up only when SIGINT is not ignored.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def signalled(args: list[str], **kwargs) -> subprocess.Popen:
    """Start a child that a test will signal: default signal dispositions, in its own process group
    (``os.killpg(proc.pid, sig)`` then reaches it and its workers, as a terminal's Ctrl-C does)."""
    return subprocess.Popen(args, preexec_fn=default_signals, process_group=0, **kwargs)


@pytest.fixture
def fresh_plugins():
    """Rebuild the plugin registry before and after a test that registers or installs plugins."""
    manager.reset()
    yield manager
    manager.reset()


def last_json(text: str) -> dict:
    """The last line of ``text`` that parses as a JSON object (``--json`` output)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON object in output:\n{text}")


def store_uri(root: Path) -> str:
    """The tracking URI of the default store that trainforge creates under ``root`` (absolute)."""
    return f"sqlite:///{Path(root).resolve()}/mlruns/mlflow.db"


def mlflow_client(root: Path):
    """A real ``MlflowClient`` on the default store under ``root``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store_uri(root))


def error_line(result) -> str:
    """The single ``Error: ...`` line of a failed in-process command; asserts the failure contract."""
    assert result.exit_code == 1, f"exit {result.exit_code}, output:\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].startswith("run ") and lines[0].endswith(" started"):
        lines = lines[1:]  # `train` names its run on stderr as soon as it opens (the error came later)
    assert len(lines) == 1, f"expected one line, got:\n{result.output}\n{result.exception!r}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A CNN trained on digits (5 epochs, on the CPU) by the real console script in its own directory, once per
    session (tests comparing onnxruntime with torch on the CPU read it; GPU counterparts train their own).

    Shared read-only by the end-to-end, tracking and ONNX tests: ``root`` (the working directory that
    holds the default store ``mlruns/``), ``tracking_uri``, ``run_id``, ``result`` (the ``--json``
    object) and the process' ``stdout``/``stderr``.
    """
    root = tmp_path_factory.mktemp("digits_run")
    exe = shutil.which("trainforge", path=str(BIN)) or shutil.which("trainforge")
    assert exe, "the trainforge console script is not installed"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    env["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    proc = subprocess.run([exe, "train", "--model", "cnn", "--dataset", "digits", "--epochs", "5", "--quiet",
                           "--json", "--device", "cpu"], cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"training failed:\n{proc.stdout}\n{proc.stderr}"
    result = last_json(proc.stdout)
    return SimpleNamespace(root=root, tracking_uri=store_uri(root), run_id=result["run_id"], result=result,
                           stdout=proc.stdout, stderr=proc.stderr)
