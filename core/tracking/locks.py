"""Inter-process locks shared by every process that uses one store.

- :class:`FileLock`: an exclusive ``flock`` on a file (one machine: SQLite files and journal files only
  serve one machine anyway). Without ``fcntl`` (Windows) it is a no-op.
- :class:`PostgresLock`: a session-level PostgreSQL advisory lock (``pg_advisory_lock``) on its own
  connection to the store's database, so it works across machines; PostgreSQL releases it when the
  connection ends, also when the holder is killed.
- :class:`NullLock`: other databases (MySQL, ...): no lock, callers' checks are best effort.

:func:`storage_lock` picks one for a storage URL or journal path. Locks are not re-entrant: one process
must not acquire the same lock twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from trainforge.errors import TrainforgeError


class NullLock:
    """A lock that never waits (stores without a lock primitive we use)."""

    shared = False

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def __enter__(self) -> NullLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class FileLock(NullLock):
    """An exclusive ``flock`` on ``path`` (created with its folder if needed); blocks until it is free."""

    shared = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: Any = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a")  # noqa: SIM115 - kept open while the lock is held
        except OSError as exc:  # e.g. a read-only folder
            raise TrainforgeError(f"cannot create the lock file {self.path}: {exc.strerror or exc}; its folder "
                                  "must be writable") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        self._handle = handle

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        handle, self._handle = self._handle, None
        try:
            fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()


class PostgresLock(NullLock):
    """A PostgreSQL advisory lock named ``name`` (hashed to a signed 64-bit key) in the database ``url``.

    Each :meth:`acquire` opens a connection (SQLAlchemy, no pool) and blocks in ``pg_advisory_lock``;
    :meth:`release` unlocks and closes it. Connection errors propagate (SQLAlchemy ``OperationalError``).
    """

    shared = True

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None
        self._engine: Any = None

    def acquire(self) -> None:
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(driver_url(self.url), poolclass=sqlalchemy.pool.NullPool)
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        if self._conn is None:
            return
        import sqlalchemy

        conn, self._conn = self._conn, None
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        finally:
            conn.close()  # ending the session releases the lock in any case


def driver_url(url: str) -> str:
    """``url`` with an explicit PostgreSQL driver when the default one is missing.

    SQLAlchemy 2.1 maps a plain ``postgresql://`` URL to psycopg 3 (2.0: psycopg2). When only psycopg2
    is installed (trainforge's ``postgres`` extra: ``psycopg2-binary``), such a URL becomes
    ``postgresql+psycopg2://``; any other URL, or one naming its driver, is returned unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return url
    import importlib.util

    from sqlalchemy.engine import make_url

    driver = make_url(f"postgresql://{rest}").get_dialect().driver
    if importlib.util.find_spec(driver) is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLAlchemy SQLite URL (``sqlite:///rel/f.db`` -> ``rel/f.db``,
    ``sqlite:////abs/f.db`` -> ``/abs/f.db``, query string dropped); ``None`` for in-memory SQLite and for
    any other URL."""
    if "://" not in url or not url.split("://", 1)[0].lower().startswith("sqlite") or ":///" not in url:
        return None
    db = url.split(":///", 1)[1].partition("?")[0]
    return db if db and db != ":memory:" else None


def storage_lock(url: str, name: str | None = None) -> NullLock:
    """The lock called ``name`` (``None``: the store-wide lock) shared by all users of storage ``url``.

    - journal file ``path``: ``FileLock(path.<name>.lock)`` (``path.lock`` without a name);
    - ``sqlite:///db``: ``FileLock(db.<name>.lock)`` (``db.lock`` without a name, the file
      :func:`trainforge.tracking.sqlite_lock` uses); in-memory SQLite: :class:`NullLock`;
    - ``postgresql://...`` (any driver): :class:`PostgresLock` on ``trainforge`` or ``trainforge:<name>``;
    - anything else: :class:`NullLock`.
    """
    suffix = f".{name}.lock" if name else ".lock"
    if "://" not in url:
        return FileLock(url + suffix)
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("sqlite"):
        db = sqlite_file(url)
        return FileLock(db + suffix) if db else NullLock()
    if scheme.startswith(("postgresql", "postgres")):
        return PostgresLock(url, f"trainforge:{name}" if name else "trainforge")
    return NullLock()
