"""``trainforge ui`` as real processes on loopback: a link to the runs table once the port answers, a taken
port refused at once, and SIGTERM to the trainforge process freeing the port."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TF = shutil.which("trainforge", path=str(Path(sys.executable).parent)) or "trainforge"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return out


def test_taken_port_is_an_error_within_10_s(workdir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run([TF, "ui", "--port", str(port)], cwd=workdir, capture_output=True, text=True,
                              timeout=60, env=env())
        seconds = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert seconds < 10
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr and f"--port {port + 1}" in proc.stderr
    assert "Traceback" not in proc.stderr and "http://" not in proc.stderr


@pytest.mark.slow
def test_ui_prints_the_runs_link_when_it_answers_and_sigterm_frees_the_port(workdir):
    from trainforge.tracking import store

    experiment_id = store.setup(None, "trainforge")  # the store and experiment `trainforge train` creates
    import mlflow

    assert mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    port = free_port()
    proc = subprocess.Popen([TF, "ui", "--port", str(port)], cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env())
    group = None
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "Ctrl-C" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "trainforge ui ended before printing its URL"
        link = re.search(r"http://\S+", line).group(0)
        assert link == f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        assert port_open(port)  # printed only once the server answers
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.status == 200 and b"<html" in resp.read().lower()
        children = subprocess.run(["pgrep", "-P", str(proc.pid)],
                                  capture_output=True, text=True).stdout.split()
        assert len(children) == 1  # the mlflow process, in its own process group
        group = os.getpgid(int(children[0]))
        assert group != os.getpgid(proc.pid)
        members = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split()
        assert 1 <= len(members) <= 3, members  # the guard, mlflow ui, one uvicorn worker; no job runner

        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while port_open(port) and time.monotonic() - stopped < 15:
            time.sleep(0.1)
        assert not port_open(port), "the port is still taken 15 s after SIGTERM"
        assert proc.wait(timeout=15) == 128 + signal.SIGTERM
        time.sleep(0.5)
        left = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split()
        assert left == [], f"processes of the server's group left running: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if group is not None:  # a failed test must not leave the server running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
