"""``trainforge server``: the team set-up, a real ``mlflow server`` with a database backend."""

from __future__ import annotations

import subprocess
import sys
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
    cmd = server_command(backend_store_uri, artifacts_destination, host, port, workers)
    if host not in LOOPBACK:
        click.echo(f"warning: the server is bound to {host}, reachable from other machines; "
                   "MLflow has no authentication by default", err=True)
    click.echo(f"MLflow tracking server at http://{host}:{port} (store {backend_store_uri}, artifacts "
               f"{artifacts_destination}); Ctrl-C stops it", err=True)
    try:
        raise SystemExit(subprocess.call(cmd))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
