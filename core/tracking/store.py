"""MLflow set-up and run lifecycle.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``, relative to the
working directory (for any SQLite store, artifacts go to ``artifacts/`` beside the database file) (MLflow 3.17+ refuses a plain ``./mlruns`` file store). ``--tracking-uri`` or
``MLFLOW_TRACKING_URI`` override it.

MLflow ends a run FINISHED when an exception escapes outside a ``with start_run()`` block, and leaves
it RUNNING after SIGKILL, so :func:`run_status` sets FAILED / KILLED itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainforge import interrupts
from trainforge.errors import ConfigError, TrainforgeError
from trainforge.tracking import tags as tag
from trainforge.tracking.locks import sqlite_file

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "trainforge"
ARTIFACT_ROOT = Path("mlruns") / "artifacts"
#: Tags of experiments trainforge creates. ``mlflow.experimentKind`` marks a model-training experiment
#: (MLflow's UI label "Machine learning"); MLflow 3.17's own UI picks the runs or traces view from the URL
#: (``?workflowType=machine_learning``, what ``trainforge ui`` links to) while its workflow switcher is on.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri(uri: str | None = None) -> str:
    """The URI in force: the argument, else ``MLFLOW_TRACKING_URI``, else the local SQLite store.

    A relative SQLite path is made absolute against the current directory: MLflow caches one store and
    one database engine per URI string, so a relative URI would keep pointing at the database of the
    directory it was first used in after a ``chdir`` (a notebook, or several runs in one process).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        path, sep, query = uri[len(prefix):].partition("?")
        uri = f"{prefix}{Path(path).absolute()}{sep}{query}"
    return uri


def setup(uri: str | None = None, experiment: str | None = None) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment if needed.

    Raises :class:`TrainforgeError` when the store cannot be reached.
    """
    import mlflow

    from trainforge.tracking import artifact_repo

    name = check_experiment_name(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
    uri = tracking_uri(uri)
    if db := sqlite_file(uri):  # a SQLite file: create its folder
        try:
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrainforgeError(f"cannot use the MLflow tracking store {uri!r}: cannot create the folder "
                                  f"{Path(db).parent} ({exc.strerror or exc})") from None
    mlflow.set_tracking_uri(uri)
    artifact_repo.install()  # local artifacts appear whole or not at all (a full disk, a signal)
    try:
        with sqlite_lock(uri), first_contact(uri):  # processes starting together must not both create the schema
            new = bool(db) and not (Path(db).is_file() and Path(db).stat().st_size > 0)
            try:
                if db:
                    from trainforge.tracking.schema import prepare

                    prepare(db)  # a new store's schema from a template: milliseconds instead of MLflow's seconds
                experiment_id = _experiment_id(mlflow, uri, name)
            except TrainforgeError as exc:
                if new and getattr(exc, "environment", False):  # e.g. a full disk: no half-built schema left
                    for suffix in ("", "-journal", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)
                raise
    except TrainforgeError as exc:
        raise TrainforgeError(str(exc) if str(exc).startswith("cannot use") else
                              f"cannot use the MLflow tracking store {uri!r}: {exc}") from None
    check_writable(uri, mlflow.get_experiment(experiment_id).artifact_location)
    return experiment_id


def check_experiment_name(name: str) -> str:
    """Return ``name``, or raise :class:`ConfigError` for ``.``, ``..`` or an empty name: artifacts go to
    ``mlruns/artifacts/<name>``, and these name the store's own folders (``mlruns/artifacts``, ``mlruns/``)."""
    if name.strip() in ("", ".", ".."):
        raise ConfigError(f"experiment name {name!r} is not allowed: it names a folder of the store itself; "
                          "choose another (--experiment NAME)")
    return name


def check_writable(uri: str, artifact_location: str | None) -> None:
    """Raise :class:`TrainforgeError` before a run opens when a local store cannot be written: the SQLite
    file (or its folder) and the experiment's artifact folder (``os.access``: a read-only mount or missing
    permissions; root passes permission bits, which do not stop root's writes either)."""
    from urllib.parse import unquote, urlparse

    paths = []
    if db := sqlite_file(uri):
        paths.append(Path(db))
    if artifact_location and urlparse(artifact_location).scheme in ("", "file"):
        paths.append(Path(unquote(urlparse(artifact_location).path)))
    for path in paths:
        while not path.exists() and path.parent != path:
            path = path.parent  # created on first use: the nearest existing folder must be writable
        if not os.access(path, os.W_OK):
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
            raise TrainforgeError(f"cannot use the MLflow tracking store {uri!r}: {path} is "
                                  f"{'on a read-only file system' if read_only else 'not writable'}; runs are "
                                  "written there (choose another store with --tracking-uri)")


#: MLflow's HTTP client settings during the first request to a tracking server (env var -> value), so an
#: unreachable server fails in ~10 s instead of MLflow's defaults (7 retries, backoff factor 2, 120 s
#: timeout: minutes). Variables the user set are left alone. Names: mlflow.environment_variables.
FIRST_CONTACT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


@contextlib.contextmanager
def mlflow_environ(values: dict[str, str]) -> Iterator[None]:
    """MLflow settings (environment variables, names from ``mlflow.environment_variables``) for the block
    only: the library never changes its caller's environment for good. Variables already set are left alone."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


#: no progress bar on stderr while an artifact downloads (our commands print one line, or --json on stdout)
QUIET_DOWNLOAD = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@contextlib.contextmanager
def first_contact(uri: str) -> Iterator[None]:
    """Bound MLflow's retries and timeout (:data:`FIRST_CONTACT`) while the block talks to an HTTP server."""
    with mlflow_environ(FIRST_CONTACT if uri.startswith(("http://", "https://")) else {}):
        yield


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most ``limit`` characters (MLflow's carry tracebacks)."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def sqlite_lock(uri: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<db>.lock`` beside a SQLite store (no-op elsewhere or without fcntl);
    see :func:`trainforge.tracking.locks.storage_lock`."""
    from trainforge.tracking.locks import NullLock, storage_lock

    with storage_lock(uri) if sqlite_file(uri) else NullLock():
        yield


def _experiment_id(mlflow: Any, uri: str, name: str) -> str:
    try:
        found = mlflow.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise TrainforgeError(f"experiment {name!r} is deleted; restore it or choose another name")
            return found.experiment_id
        location = None
        if db := sqlite_file(uri):
            # artifacts live beside the database: sqlite:///mlruns/mlflow.db -> mlruns/artifacts/<experiment>
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "experiment"
            location = (Path(db).parent / ARTIFACT_ROOT.name / slug).resolve().as_uri()
        return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except TrainforgeError:
        raise
    except Exception as exc:  # MlflowException, connection errors, SQLAlchemy errors
        from trainforge.errors import environment_fault

        fault = environment_fault(exc)  # a full or read-only disk: named with its path and device
        error = TrainforgeError(f"cannot use the MLflow tracking store {uri!r}: {fault or one_line(exc)}")
        error.environment = fault is not None
        raise error from None


@contextlib.contextmanager
def run_status(run_id: str) -> Iterator[None]:
    """End the run FINISHED on success, KILLED on Ctrl-C, FAILED on any other exception (re-raised).

    The error is kept on the run as the tag ``trainforge.error``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        yield
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (trainforge.interrupts.Terminated)
        _end(client, run_id, "KILLED", interrupts.describe(exc))
        raise
    except BaseException as exc:
        marked = _end(client, run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(AttributeError):  # for the caller's one line (trainforge.tracking.outcome)
            exc.run_id, exc.run_marked = run_id, marked
        raise
    _end(client, run_id, "FINISHED", None)


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT), SIGTERM and SIGHUP until the block ends, then raise ``KeyboardInterrupt`` (or
    :class:`trainforge.interrupts.Terminated`).

    For MLflow writes: a ``KeyboardInterrupt`` raised inside a SQLite transaction can leave the store locked
    for the rest of the process, so the run could not then be marked KILLED ("database is locked").
    A no-op outside the main thread and for a signal whose handler is not one that raises
    (:func:`trainforge.interrupts.raises`; e.g. in nested blocks). If the block raises, its exception
    propagates and a held signal is dropped.
    """
    held = []
    if threading.current_thread() is threading.main_thread():
        held = [sig for sig in interrupts.STOPPING if interrupts.raises(sig)]
    if not held:
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for sig in received:
        if sig in interrupts.TERMINATING:
            interrupts.handle_sigterm(sig)  # raises Terminated unless already terminating
    if signal.SIGINT in received:
        raise KeyboardInterrupt


def _end(client: Any, run_id: str, status: str, error: str | None) -> bool:
    """Mark the run ``status`` (first: a full disk may leave room for one small write), then tag ``error``;
    True when the status was written. On failure the run is dropped from MLflow's active-run stack all the
    same, so no later ``mlflow.end_run()`` can end it FINISHED."""
    import mlflow

    from trainforge.errors import environment_fault

    with contextlib.suppress(Exception):
        mlflow.flush_async_logging()
    marked = False
    for attempt in (1, 2):
        try:
            with deferred_interrupt():
                if not marked:
                    active = mlflow.active_run()
                    if active is not None and active.info.run_id == run_id:
                        mlflow.end_run(status=status)  # pops the run first, then writes
                    else:
                        client.set_terminated(run_id, status=status)
                    marked = True
                if error:
                    client.set_tag(run_id, tag.ERROR, error[:5000])
            return True
        except Exception as exc:  # the run must not hide the original error
            if attempt == 1 and _reset_store():
                continue  # e.g. a connection an interrupt left inside a transaction: retry on fresh ones
            if (fault := environment_fault(exc)) is not None:  # the command's own line says it
                log.info("could not mark MLflow run %s as %s: %s", run_id, status, fault)
            else:
                log.exception("could not mark MLflow run %s as %s", run_id, status)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        with contextlib.suppress(Exception):
            mlflow.end_run(status=status)
    return marked


def _reset_store() -> bool:
    """Close the tracking store's pooled database connections (rolling back what they hold); True if it could."""
    import gc

    try:
        from mlflow.tracking._tracking_service.utils import _get_store

        engine = getattr(_get_store(), "engine", None)
        if engine is None:
            return False
        gc.collect()  # sessions dropped by an exception return their connections to the pool
        engine.dispose()
        return True
    except Exception:  # noqa: BLE001 - best effort
        return False


def setup_uri(uri: str | None = None) -> str:
    """Point MLflow at the store in force (see :func:`tracking_uri`) without touching experiments."""
    import mlflow

    from trainforge.tracking import artifact_repo

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    artifact_repo.install()
    return uri


def store_status(uri: str | None = None) -> dict[str, Any]:
    """Whether the tracking store in force (see :func:`tracking_uri`) takes writes, without creating anything
    in it: ``tracking_uri``, ``writable`` (``True``/``False``; ``None`` when not checkable from here) and
    ``detail``.

    - SQLite: the database file opens for writing, or its folder (the nearest existing one) takes a new file;
      the artifacts go beside it (``artifacts/``), so that folder is the one that matters;
    - an MLflow server (``http(s)://``): its ``/health`` answers within 5 s; writes are not tried;
    - other databases (PostgreSQL, MySQL): a SQLAlchemy connection opens within 5 s; writes are not tried.
    """
    import tempfile

    uri = tracking_uri(uri)
    if db := sqlite_file(uri):
        path = Path(db)
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            if path.exists():
                with open(path, "r+b"):
                    pass
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder} is not a folder")
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as exc:
            return {"tracking_uri": uri, "writable": False, "detail": f"{type(exc).__name__}: {exc}"}
        return {"tracking_uri": uri, "writable": True,
                "detail": "database file writable" if path.exists() else f"will be created (in {folder})"}
    try:
        if uri.startswith(("http://", "https://")):
            import urllib.request

            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
            return {"tracking_uri": uri, "writable": None, "detail": "server reachable; writes not tried"}
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, pool_pre_ping=True)
        with engine.connect():
            pass
        engine.dispose()
        return {"tracking_uri": uri, "writable": None, "detail": "database reachable; writes not tried"}
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a health check
        return {"tracking_uri": uri, "writable": False, "detail": f"not reachable: {type(exc).__name__}: {exc}"}


def get_run(run_id: str) -> Any:
    """The MLflow run ``run_id``; raises :class:`TrainforgeError` when the store does not know it."""
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_run(run_id)
    except Exception as exc:
        raise TrainforgeError(
            f"run {run_id!r} not found in tracking store {tracking_uri()!r} ({type(exc).__name__}); "
            "pass --tracking-uri if it lives elsewhere"
        ) from None


def download(run_id: str, artifact_path: str) -> str:
    """Local path of a run's artifact (the file itself for a local store, else a downloaded copy)."""
    from urllib.parse import unquote, urlparse

    import mlflow

    run = get_run(run_id)
    uri = urlparse(run.info.artifact_uri)
    if uri.scheme in ("", "file"):  # local store: the file itself, no copy
        local = Path(unquote(uri.path)) / artifact_path
        if local.exists():
            return str(local)
    try:
        with mlflow_environ(QUIET_DOWNLOAD):
            return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path)
    except Exception as exc:
        raise TrainforgeError(f"run {run_id!r} has no artifact {artifact_path!r} ({exc})") from None
