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
                   workers: int | None = None, allowed: list[str] | None = None,
                   basic_auth: bool = False) -> list[str]:
    """The ``mlflow server`` command line (artifacts proxied by the server: ``--serve-artifacts``).

    ``allowed`` becomes ``--allowed-hosts`` (MLflow's Host-header check against DNS rebinding; MLflow's own
    default when None); ``basic_auth`` adds ``--app-name basic-auth``.
    """
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
    if allowed:
        cmd += ["--allowed-hosts", ",".join(allowed)]
    if basic_auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


@click.command(epilog="""\b
Examples:
  trainforge server                                   # http://127.0.0.1:5000, SQLite under mlruns/
  trainforge server --backend-store-uri postgresql://mlflow@db/mlflow --artifacts-destination s3://bucket/mlflow \\
                    --host 0.0.0.0 --allowed-hosts mlflow.example.com --basic-auth
  # then, on every machine of the team:
  export MLFLOW_TRACKING_URI=http://SERVER:5000   # or: trainforge train --tracking-uri http://SERVER:5000""")
@click.option("--backend-store-uri", default="sqlite:///mlruns/mlflow.db", show_default=True,
              help="Database for runs and the model registry (sqlite, postgresql, mysql).")
@click.option("--artifacts-destination", default="mlruns/artifacts", show_default=True,
              help="Where the server stores artifacts (a folder, s3://, gs://, ...); clients upload through it.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback unless told).")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, help="Server worker processes (mlflow's default when omitted).")
@click.option("--allowed-hosts", "allowed_hosts", multiple=True, metavar="NAME[,NAME...]",
              help="Names clients reach the server by (repeatable or comma-separated; fnmatch patterns such as "
                   "'*.example.com' work). Requests with another Host header are refused (MLflow's DNS-rebinding "
                   "protection). Default with a non-loopback --host: this machine's host name, FQDN and "
                   "addresses; loopback names are always allowed.")
@click.option("--basic-auth", is_flag=True,
              help="Require a user name and password (MLflow's basic-auth app). The first start needs "
                   "MLFLOW_AUTH_ADMIN_PASSWORD (at least 12 characters) for the user 'admin'; clients set "
                   "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD. Needs trainforge[auth].")
@click.option("--auth-database-uri", default="sqlite:///mlruns/basic_auth.db", show_default=True,
              help="With --basic-auth: the database of users and permissions.")
def server(backend_store_uri: str, artifacts_destination: str, host: str, port: int, workers: int | None,
           allowed_hosts: tuple[str, ...], basic_auth: bool, auth_database_uri: str) -> None:
    """Start an MLflow tracking server that every trainforge command can log to."""
    import os

    check_port(host, port)
    allowed = host_patterns(host, port, allowed_hosts)
    env = auth_env(auth_database_uri) if basic_auth else None
    cmd = server_command(backend_store_uri, artifacts_destination, host, port, workers, allowed, basic_auth)
    if host not in LOOPBACK:
        warn_exposed(host, "anyone who can reach it can read and write runs" if not basic_auth
                     else "clients log in with MLflow's basic auth")
        click.echo(f"allowed Host headers: {', '.join(allowed)}", err=True)
    click.echo(f"starting an MLflow tracking server (store {backend_store_uri}, artifacts {artifacts_destination})",
               err=True)
    raise SystemExit(supervise(cmd, host, port, lambda: f"MLflow tracking server at {base_url(host, port)} "
                                                        "(Ctrl-C stops it)", env={**os.environ, **(env or {})}))


def warn_exposed(host: str, auth: str) -> None:
    """The warning ``server`` and ``ui`` print when bound beyond loopback."""
    click.echo(f"warning: the server is bound to {host}, reachable from other machines; {auth}", err=True)


def host_patterns(host: str, port: int, given: tuple[str, ...] = ()) -> list[str] | None:
    """The ``--allowed-hosts`` list for MLflow: each name bare and as ``name:port`` (MLflow compares the whole
    Host header, port included, with ``fnmatch``: ``mlflow.server.security_utils.is_allowed_host_header``).

    Loopback names are always in. ``given`` (repeatable, comma-separated) adds names; without it, a server
    bound beyond loopback admits this machine's host name, FQDN and addresses. Returns None (MLflow's
    default: loopback and private-network addresses) for a loopback server with no ``given`` names.
    """
    names = [n.strip() for item in given for n in item.split(",") if n.strip()]
    if not names and host in LOOPBACK:
        return None
    if not names:
        names = own_names(host)
    out: list[str] = []
    for name in ["localhost", "127.0.0.1", "[::1]", *names]:
        if name.count(":") > 1 and not name.startswith("["):
            name = f"[{name}]"  # a bare IPv6 address, written as in a Host header
        has_port = "]:" in name if name.startswith("[") else ":" in name
        out += [p for p in ((name,) if has_port else (name, f"{name}:{port}")) if p not in out]
    return out


def own_names(host: str) -> list[str]:
    """This machine's host name, FQDN and IP addresses (the bind address too when it is a specific one)."""
    import socket

    names = [socket.gethostname(), socket.getfqdn()]
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    for name in list(names):
        with contextlib.suppress(OSError):
            names += [info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface's address
        names.append(sock.getsockname()[0])
    return [n for n in dict.fromkeys(names) if n and n not in LOOPBACK]


def auth_env(database_uri: str) -> dict[str, str]:
    """Environment for ``mlflow server --app-name basic-auth``; raises ``click.ClickException`` when it cannot start.

    MLflow 3.17 reads its auth settings from the INI file at ``MLFLOW_AUTH_CONFIG_PATH`` (its packaged
    ``basic_auth.ini`` keeps users in ``./basic_auth.db`` of the working folder), creates the admin user on
    first start from ``MLFLOW_AUTH_ADMIN_PASSWORD`` (12 characters at least), and needs
    ``MLFLOW_FLASK_SERVER_SECRET_KEY`` for CSRF protection of its sign-up form; a random one is made when unset.
    """
    import importlib.util
    import os
    import secrets

    if importlib.util.find_spec("flask_wtf") is None:
        raise click.ClickException("--basic-auth needs Flask-WTF: pip install 'trainforge[auth]'")
    env = {"MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)}
    if not os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):
        if database_uri.startswith("sqlite:///") and not database_uri.startswith("sqlite:////"):
            db = Path(database_uri[len("sqlite:///"):]).resolve()
            db.parent.mkdir(parents=True, exist_ok=True)
            database_uri = f"sqlite:///{db}"
            first_start = not db.exists()
        else:
            first_start = False  # a server database: MLflow itself says when the admin password is missing
        password = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
        if first_start and len(password) < 12:
            raise click.ClickException("--basic-auth: set MLFLOW_AUTH_ADMIN_PASSWORD (12 characters at least) for "
                                       "the first start; it becomes the password of the user 'admin'")
        config = Path(database_uri[len("sqlite:///"):]).with_suffix(".ini") if database_uri.startswith(
            "sqlite:///") else Path("mlruns/basic_auth.ini").resolve()
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("[mlflow]\ndefault_permission = READ\n"
                          f"database_uri = {database_uri}\nadmin_username = admin\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    return env


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


def ui_ready(host: str, port: int, experiment: str) -> str:
    """The line printed once the UI answers: a link that opens the experiment's runs table."""
    link = runs_link(host, port, experiment)
    if link is None:
        return (f"MLflow UI at {base_url(host, port)} (no experiment {experiment!r} yet: it appears after the "
                "first `trainforge train`); Ctrl-C stops it")
    return f"MLflow UI: {link}  (Ctrl-C stops it)"


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
    - The group's leader is a guard (:func:`guard`) that ends the group when this process dies, even by
      SIGKILL (Linux ``PR_SET_PDEATHSIG``, and its parent's pid checked every 0.2 s elsewhere): ``mlflow ui``
      runs uvicorn as its own child, which a death signal to ``mlflow`` alone would leave holding the port.
    """
    import os
    import signal
    import time

    guarded = [sys.executable, "-m", "trainforge.cli.server", "--guard", str(os.getpid()), *cmd]
    proc = subprocess.Popen(guarded, start_new_session=True, env=env, preexec_fn=_die_with_parent)
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


def _die_with_parent() -> None:
    """``preexec_fn``: SIGTERM to the child when this process dies (Linux ``prctl(PR_SET_PDEATHSIG)``; kept
    across ``execve``); a no-op elsewhere, where :func:`guard` polls its parent's pid instead."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


def guard(parent: int, cmd: list[str]) -> int:
    """Run ``cmd`` in this process's group (this process leads it, see :func:`supervise`) until it ends; when
    a stopping signal arrives or ``parent`` is gone, SIGTERM the whole group, wait up to :data:`STOP_GRACE`
    seconds for every other member (``/proc``, Linux; elsewhere for ``cmd`` alone), then SIGKILL what is
    left. Returns ``cmd``'s exit code (``128 + N`` when it died of signal ``N``)."""
    import os
    import signal
    import time

    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    proc = subprocess.Popen(cmd)
    while proc.poll() is None and not stopping and os.getppid() == parent:
        time.sleep(0.2)
    if proc.poll() is None or _group_members():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)  # the server, uvicorn, its workers; this process ignores it
        end = time.monotonic() + STOP_GRACE
        while (proc.poll() is None or _group_members()) and time.monotonic() < end:
            time.sleep(0.1)
        if proc.poll() is None or _group_members():
            os.killpg(0, signal.SIGKILL)  # this process too
    code = proc.wait()
    return 128 - code if code < 0 else code


def _group_members() -> list[int]:
    """Other live processes of this process group (Linux ``/proc/<pid>/stat``: field 5 is the group)."""
    import os

    me, group, found = os.getpid(), os.getpgid(0), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(entry))
    return found


if __name__ == "__main__" and sys.argv[1:2] == ["--guard"]:  # python -m trainforge.cli.server --guard PID CMD...
    raise SystemExit(guard(int(sys.argv[2]), sys.argv[3:]))
