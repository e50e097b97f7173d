"""``trainforge server`` / ``ui`` beyond loopback, as real processes: MLflow's Host-header check stays on
(a DNS-rebinding request with ``Host: evil.example`` is refused), ``--allowed-hosts`` admits a named host,
``--basic-auth`` asks for a password, and ``ui`` warns when bound beyond loopback.

The servers bind 127.0.0.2 for "beyond loopback": trainforge treats any address other than 127.0.0.1,
localhost and ::1 as reachable from elsewhere, while the kernel keeps 127.0.0.0/8 on this machine.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import signalled
from faults import EXE, _env, one_line

PASSWORD = "correct-horse-battery"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(workdir, *args: str, **env: str) -> Iterator[list[str]]:
    """Start ``trainforge *args`` (own process group, default signal dispositions), yield its stderr lines up
    to the ready line; then SIGTERM it and check the server's whole process group is gone."""
    proc = signalled([EXE, *args], cwd=workdir, env=_env(workdir, **env), stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE, text=True)
    group = None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while not (lines and "Ctrl-C stops it" in lines[-1]) and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "ended before it answered:\n" + "".join(lines)
            lines.append(line)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        group = os.getpgid(int(children[0]))  # the mlflow server's own group
        yield lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        end = time.monotonic() + 10  # SIGKILLed job runners take a moment to go
        while (left := alive(group)) and time.monotonic() < end:
            time.sleep(0.2)
        assert left == [], f"processes of the server's group left running: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def alive(group: int) -> list[str]:
    """Processes of ``group`` still running (zombies waiting for their reaper do not count)."""
    pids = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split()
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
                out.append(pid)
    return out


def status(url: str, host: str, user: str | None = None, password: str | None = None) -> int:
    """HTTP status of ``GET url`` sent with the header ``Host: host`` (and basic auth when ``user`` is given)."""
    request = urllib.request.Request(url, headers={"Host": host})
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_server_beyond_loopback_admits_only_this_machines_names(workdir):
    port = free_port("127.0.0.2")
    with serving(workdir, "server", "--host", "127.0.0.2", "--port", str(port)) as lines:
        url = f"http://127.0.0.2:{port}{SEARCH}"
        assert status(url, "evil.example") in (400, 403)  # 200 before: trainforge passed --allowed-hosts "*"
        assert status(url, f"evil.example:{port}") in (400, 403)
        assert status(url, f"127.0.0.2:{port}") == 200
        assert status(url, f"{socket.gethostname()}:{port}") == 200
        assert status(url, f"127.0.0.1:{port}") == 200
    text = "".join(lines)
    assert "warning: the server is bound to 127.0.0.2, reachable from other machines" in text
    assert "Accepting ALL hosts" not in text


@pytest.mark.slow
def test_server_allowed_hosts_flag_and_basic_auth(workdir, monkeypatch):
    port = free_port()
    with serving(workdir, "server", "--port", str(port), "--allowed-hosts", "team.example", "--basic-auth",
                 MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD):
        url = f"http://127.0.0.1:{port}{SEARCH}"
        assert status(url, f"team.example:{port}") == 401  # no credentials
        assert status(url, f"team.example:{port}", "admin", "wrong-password-123") == 401
        assert status(url, f"team.example:{port}", "admin", PASSWORD) == 200
        assert status(url, f"other.example:{port}", "admin", PASSWORD) in (400, 403)
        # what a trainforge client does: MLflow's client sends MLFLOW_TRACKING_USERNAME/PASSWORD
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        assert client.create_experiment("team") and client.get_experiment_by_name("team")
    assert (workdir / "mlruns" / "basic_auth.db").exists()  # the users' database, next to the runs


def test_basic_auth_without_admin_password_is_one_line(workdir):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    done = subprocess.run([EXE, "server", "--port", str(free_port()), "--basic-auth"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "set MLFLOW_AUTH_ADMIN_PASSWORD (12 characters at least)" in one_line(done.stderr)
    assert not (workdir / "mlruns" / "basic_auth.db").exists()


@pytest.mark.slow
def test_ui_beyond_loopback_warns_and_checks_host_headers(workdir):
    port = free_port("127.0.0.2")
    with serving(workdir, "ui", "--host", "127.0.0.2", "--port", str(port)) as lines:
        url = f"http://127.0.0.2:{port}{SEARCH}"
        assert status(url, "evil.example") in (400, 403)
        assert status(url, f"{socket.gethostname()}:{port}") == 200
    assert lines[0].startswith("warning: the server is bound to 127.0.0.2, reachable from other machines; "
                               "MLflow's UI has no authentication")

