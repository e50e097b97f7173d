"""``trainforge server``: the team set-up, a real ``mlflow server`` with a database backend."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def server_command(backend_store_uri: str, artifacts_destination: str, host: str, port: int,
                   workers: int | None = None) -> list[str]:
    """The ``mlflow server`` command line (artifacts proxied by the server: ``--serve-artifacts``)."""
    if backend_store_uri.startswith("sqlite:///") and not backend_store_uri.startswith("sqlite:////"):
        Path(backend_store_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in artifacts_destination:
        Path(artifacts_destination).mkdir(parents=True, exist_ok=True)
        artifacts_destination = str(Path(artifacts_destination).resolve())
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
           "--serve-artifacts", "--artifacts-destination", artifacts_destination,
           "--host", host, "--port", str(port)]
    if workers:
        cmd += ["--workers", str(workers)]
    if host not in LOOPBACK:
        # MLflow checks the Host header; clients on other machines use this machine's name or address.
        cmd += ["--allowed-hosts", "*"]
    return cmd


@click.command(epilog="""\b
Examples:
  trainforge server                                   # http://127.0.0.1:5000, SQLite under mlruns/
  trainforge server --backend-store-uri postgresql://mlflow@db/mlflow --artifacts-destination s3://bucket/mlflow --host 0.0.0.0
  # then, on every machine of the team:
  export MLFLOW_TRACKING_URI=http://SERVER:5000   # or: trainforge train --tracking-uri http://SERVER:5000""")
@click.option("--backend-store-uri", default="sqlite:///mlruns/mlflow.db", show_default=True,
              help="Database for runs and the model registry (sqlite, postgresql, mysql).")
@click.option("--artifacts-destination", default="mlruns/artifacts", show_default=True,
              help="Where the server stores artifacts (a folder, s3://, gs://, ...); clients upload through it.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told).")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, help="Server worker processes (mlflow's default when omitted).")
def server(backend_store_uri: str, artifacts_destination: str, host: str, port: int, workers: int | None) -> None:
    """Start an MLflow tracking server that every trainforge command can log to."""
    check_port(host, port)
    cmd = server_command(backend_store_uri, artifacts_destination, host, port, workers)
    if host not in LOOPBACK:
        click.echo(f"warning: the server is bound to {host}, reachable from other machines; "
                   "MLflow has no authentication by default", err=True)
    click.echo(f"starting an MLflow tracking server (store {backend_store_uri}, artifacts {artifacts_destination})",
               err=True)
    raise SystemExit(supervise(cmd, host, port, lambda: f"MLflow tracking server at {base_url(host, port)} "
                                                        "(Ctrl-C stops it)"))


#: seconds to wait for the server to answer before giving up (a first start creates the database schema)
READY_TIMEOUT = 180.0
#: seconds between SIGTERM to the server's process group and SIGKILL
STOP_GRACE = 8.0


def base_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def runs_link(host: str, port: int, experiment: str) -> str | None:
    """A link that opens ``experiment``'s runs table in MLflow's UI, or None if the server has no such experiment.

    MLflow 3.17's UI shows an experiment as "GenAI apps & agents" (traces) or "Machine learning" (runs)
    from the URL parameter ``workflowType``, else the browser's last choice (localStorage
    ``mlflow.workflowType``, GenAI at first); the experiment tag ``mlflow.experimentKind`` is read only
    when that switcher is disabled. So the link carries ``workflowType=machine_learning``.
    """
    import json
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"experiment_name": experiment})
    try:
        with urllib.request.urlopen(f"{base_url(host, port)}/api/2.0/mlflow/experiments/get-by-name?{query}",
                                    timeout=10) as resp:
            experiment_id = json.loads(resp.read())["experiment"]["experiment_id"]
    except (OSError, ValueError, KeyError):  # 404 RESOURCE_DOES_NOT_EXIST is an HTTPError (an OSError)
        return None
    return f"{base_url(host, port)}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def check_port(host: str, port: int) -> None:
    """Raise ``click.ClickException`` (exit 1) when ``host:port`` cannot be bound, e.g. another server has it.

    Binds the way uvicorn does (``SO_REUSEADDR``: a port in TIME_WAIT counts as free) and closes at once.
    """
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise click.ClickException(f"port {port} on {host} is already in use (another MLflow UI or "
                                           f"server?); choose another with --port {port + 1}") from None
            raise click.ClickException(f"cannot bind {host}:{port}: {exc.strerror}") from None


def answers(host: str, port: int, path: str = "/health") -> bool:
    """True when the server answers ``GET path`` with HTTP 200 (MLflow's ``/health`` says ``OK``)."""
    import urllib.request

    try:
        with urllib.request.urlopen(base_url(host, port) + path, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def supervise(cmd: list[str], host: str, port: int, ready: Callable[[], str],
              env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` (an MLflow server) in its own process group until it ends; return its exit code.

    - When the server answers on ``host:port``, print ``ready()`` (e.g. the URL) to stderr.
    - SIGTERM, SIGINT and SIGHUP to this process are forwarded to the whole group (the server, its uvicorn
      workers and job runners), which gets :data:`STOP_GRACE` seconds before SIGKILL; so stopping the
      trainforge process frees the port. Exit code 130 after Ctrl-C, 143 after SIGTERM.
    """
    import os
    import signal
    import time

    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while proc.poll() is None and not received:
            if answers(host, port):
                click.echo(ready(), err=True)
                break
            if time.monotonic() > deadline:
                click.echo(f"warning: no answer on {base_url(host, port)} after {READY_TIMEOUT:.0f} s; still waiting",
                           err=True)
                break
            time.sleep(0.25)
        while proc.poll() is None:
            if received:
                _stop(proc)
                break
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            _stop(proc)
    if received:
        return 128 + received[0]
    return proc.returncode


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL what is left after :data:`STOP_GRACE` seconds."""
    import os
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers the server left behind, if any
    proc.wait()
