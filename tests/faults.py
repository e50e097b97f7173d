"""Helpers of the fault suite (tests/test_fault_*.py): run the console script with default signal
dispositions and check the one-line stderr contract."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import mlflow_client

EXE = shutil.which("trainforge", path=str(Path(sys.executable).parent)) or shutil.which("trainforge")
IRIS = ["--model", "mlp", "--dataset", "iris", "--epochs", "2", "--quiet"]
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def _default_signals() -> None:
    """``preexec_fn``: SIGINT, SIGTERM and SIGHUP back to their defaults (a background shell or ``nohup``
    leaves some ignored, and children inherit that)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    (workdir / "tmp").mkdir(exist_ok=True)
    return {**env, "MLFLOW_LOGGING_LEVEL": "WARNING", "TMPDIR": str(workdir / "tmp"), **extra}


def start(workdir: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], cwd=workdir, env=_env(workdir, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)


def tf(workdir: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    proc = start(workdir, *args, **env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line(err: str, prefix: str = "Error: ") -> str:
    """The stderr contract: no traceback, exactly one ``prefix`` line; other lines only the run's start."""
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(prefix)]
    others = [line for line in lines if not line.startswith(prefix)]
    assert len(errors) == 1, err
    assert all(line.startswith("run ") and line.endswith(" started") for line in others), err
    return errors[0]


def wait_for(pattern: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait until a file matching ``pattern`` exists (the run wrote it); fail if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = glob.glob(pattern)
        if found:
            return found[0]
        assert proc.poll() is None, f"exited {proc.returncode} first:\n{proc.communicate()[1]}"
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear within {timeout} s")


def store_runs(workdir: Path) -> list:
    if not (workdir / "mlruns" / "mlflow.db").exists():
        return []
    client = mlflow_client(workdir)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def artifacts(workdir: Path, run_id: str, folder: str = "checkpoints") -> set[str]:
    return {a.path for a in mlflow_client(workdir).list_artifacts(run_id, folder)}


def no_partial_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".part")], sorted(os.listdir(folder))


def no_partial_store(workdir: Path) -> None:
    """No half-written file anywhere under ``workdir`` (the store, outputs): ``*.part``, ``*.tmp``, and no
    ``trainforge-*`` temporary folder left in the child's ``TMPDIR`` (``workdir/tmp``)."""
    partial = [str(p.relative_to(workdir)) for p in workdir.rglob("*")
               if p.name.endswith((".part", ".tmp")) or ".tmp." in p.name]
    assert not partial, partial
    left = sorted(p.name for p in (workdir / "tmp").glob("trainforge-*")) if (workdir / "tmp").is_dir() else []
    assert not left, f"temporary folders left: {left}"


def stored_checkpoint(workdir: Path, run_id: str, name: str = "best.pt") -> dict:
    """The run's checkpoint as stored, loaded the way ``trainforge export`` loads it (fails if truncated)."""
    from trainforge.training import checkpoint

    (path,) = [p for p in (workdir / "mlruns").rglob(name) if run_id in str(p)]
    return checkpoint.load(path)
