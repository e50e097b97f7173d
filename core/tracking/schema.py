"""A new SQLite tracking store in milliseconds instead of seconds.

MLflow builds a new SQLite store by running its ~70 Alembic migrations with SQLite's default
``synchronous=FULL``, one fsync per DDL statement: 1.6 s on a quiet disk, 5-8 s on a busy one, paid by
the first run of every project folder and every test store. :func:`prepare` builds the schema once per
MLflow version into a template under the user's cache folder, the way MLflow's own ``fs2db`` migration
does it (``PRAGMA synchronous=OFF``, then ``mlflow.store.db.utils._initialize_tables``), and copies it to
each new store. The copy holds the schema only: MLflow still creates the "Default" experiment, with this
store's artifact root, when it first opens the store.

- The template is ``$TRAINFORGE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/trainforge``, else
  ``~/.cache/trainforge``) ``/mlflow-<version>-<schema revision>.db``. It is used only when its
  ``alembic_version`` is the schema head this MLflow expects.
- Everything here is an optimization: on any failure (cache folder unwritable, a private MLflow function
  moved) nothing is written and MLflow creates the store as it always does.
- Callers hold the store's lock (:func:`trainforge.tracking.store.sqlite_lock`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$TRAINFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/trainforge``, else ``~/.cache/trainforge``."""
    if env := os.environ.get("TRAINFORGE_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trainforge"


def prepare(db: str | Path) -> bool:
    """Give the SQLite file ``db`` MLflow's current schema when it does not exist yet (or is empty).

    Returns True when the file was created from the template, False when it was left to MLflow (it
    exists, or the template could not be made). Never raises for the template's sake.
    """
    db = Path(db)
    if db.exists() and db.stat().st_size > 0:
        return False
    partial = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        template = _template()
        shutil.copyfile(template, partial)
        os.replace(partial, db)  # a reader never sees half a file
        return True
    except Exception as exc:  # noqa: BLE001 - an optimization: MLflow builds the store itself instead
        log.debug("new store %s: no schema template (%s); MLflow creates it", db, exc)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return False


def _template() -> Path:
    import mlflow
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    folder = cache_dir()
    path = folder / f"mlflow-{mlflow.__version__}-{head}.db"
    if path.exists() and _revision(path) == head:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".schema-", suffix=".db", dir=folder)
    os.close(fd)
    try:
        _build(Path(tmp))
        if _revision(Path(tmp)) != head:
            raise RuntimeError(f"built schema is not at revision {head}")
        os.replace(tmp, path)  # another process building the same template at once is harmless
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path


def _build(path: Path) -> None:
    """MLflow's schema into the empty file ``path``, without an fsync per statement (as ``fs2db`` does)."""
    from mlflow.store.db.utils import _initialize_tables
    from sqlalchemy import create_engine, event

    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _no_fsync(dbapi_connection, _record):  # noqa: ANN001 - SQLAlchemy's listener signature
        dbapi_connection.execute("PRAGMA synchronous=OFF")

    chatty = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..."
    was, chatty.disabled = chatty.disabled, True
    try:
        _initialize_tables(engine)
    finally:
        chatty.disabled = was
        engine.dispose()
    with open(path, "rb+") as handle:  # one fsync for the whole file
        os.fsync(handle.fileno())


def _revision(path: Path) -> str | None:
    """The Alembic revision recorded in the SQLite file ``path``, or None."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None
