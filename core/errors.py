"""The one exception family meant for users.

The CLI turns a :class:`TrainforgeError` into a single line on stderr and exit code 1 (click's
convention for a failed command; 2 stays reserved for usage errors). Anything else is a programming
error and keeps its traceback.
"""


class TrainforgeError(Exception):
    """A user-facing error: bad input, unknown plugin, incompatible choices."""


class PluginError(TrainforgeError):
    """A plugin could not be loaded or registered (duplicate name, unknown hook, bad spec)."""


class ConfigError(TrainforgeError):
    """A configuration value is unknown, malformed or out of range."""


class DataError(TrainforgeError):
    """Input data is missing or malformed; the message names the file, row and column."""


class ExportError(TrainforgeError):
    """The ONNX export failed its gate (checker or parity with torch)."""


def row_label(index: int, csv: bool = False) -> str:
    """How data errors name a row (one convention everywhere): ``row N`` counts data rows from 1, a header
    is not a row; for a CSV file the line of the file follows, ``row 4 (line 5)``. Columns are named by
    their header, else ``column N`` counted from 1."""
    return f"row {index + 1}" + (f" (line {index + 2})" if csv else "")


#: OSError numbers that mean "the machine cannot write here", not a bug: read-only file system, permission
#: denied, no space left, disk quota exceeded
UNWRITABLE = {30: "read-only file system", 13: "permission denied", 28: "no space left on device",
              122: "disk quota exceeded"}
FULL = (28, 122)  # ENOSPC, EDQUOT: the message names the device
#: SQLite's messages for the same faults (sqlite3.OperationalError text, also inside SQLAlchemy's and MLflow's)
SQLITE_FAULTS = {"attempt to write a readonly database": 30, "database or disk is full": 28}


def environment_fault(exc: BaseException) -> str | None:
    """One line for an exception that is the machine's fault (an unwritable or full store, found in ``exc``
    or its causes: an ``OSError`` with an :data:`UNWRITABLE` errno, one of SQLite's :data:`SQLITE_FAULTS`),
    else None. The line names the path (a copy's destination, ``filename2``, before its source) and, for a
    full disk, the device: ``cannot write PATH: no space left on device (tmpfs mounted at /mnt, 3.0 MiB)``.
    A SQLite fault names the database of ``$MLFLOW_TRACKING_URI`` (which ``mlflow.set_tracking_uri`` sets)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in UNWRITABLE:
            return _line(exc.filename2 or exc.filename, exc.errno)
        for text, errno in SQLITE_FAULTS.items():
            if text in str(exc):
                return _line(_sqlite_db(), errno, "the SQLite tracking database ")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _line(path: object, errno: int, what: str = "") -> str:
    where = f" {what}{path}" if path else (f" {what.strip()}" if what else "")
    reason = UNWRITABLE[errno]
    if errno in FULL and path:
        reason += device(str(path))
    return f"cannot write{where}: {reason}"


def _sqlite_db() -> str | None:
    import os

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri[len("sqlite:///"):].partition("?")[0] or None if uri.startswith("sqlite:///") else None


def device(path: str) -> str:
    """`` (tmpfs mounted at /mnt, 3.0 MiB)``: the file system that holds ``path`` (its nearest existing
    folder), from ``/proc/self/mounts`` (Linux) and ``os.statvfs``; ``""`` when it cannot be told."""
    import os

    try:
        folder = os.path.realpath(path)
        while not os.path.exists(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        mount = folder
        while not os.path.ismount(mount):
            mount = os.path.dirname(mount)
        kind = ""
        if os.path.exists("/proc/self/mounts"):
            with open("/proc/self/mounts") as fh:
                kinds = {fields[1]: fields[2] for fields in (line.split() for line in fh) if len(fields) > 2}
            kind = kinds.get(mount, "")
        stat = os.statvfs(mount)
        size = stat.f_blocks * stat.f_frsize / 2**20
    except OSError:
        return ""
    return f" ({kind + ' ' if kind else ''}mounted at {mount}, {size:.1f} MiB)"


class NoTrialCompleted(TrainforgeError):
    """A study ended without one COMPLETE trial (every trial failed or was pruned). The message gives the most
    common failure reason and the count; ``result`` is the study's :class:`~trainforge.tuning.tune.TuneResult`
    (its ``failures`` list each failed trial's reason), for ``tune --json``."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result
