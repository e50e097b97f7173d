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


def environment_fault(exc: BaseException) -> str | None:
    """One line for an exception that is the machine's fault (an unwritable or full store, found in ``exc``
    or its causes: an ``OSError`` with an :data:`UNWRITABLE` errno, SQLite's "attempt to write a readonly
    database"), else None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in UNWRITABLE:
            where = f"{exc.filename}: " if exc.filename else ""
            return f"cannot write {where}{UNWRITABLE[exc.errno]}"
        if "attempt to write a readonly database" in str(exc):
            return "cannot write the SQLite tracking database: it is read-only (a read-only file or folder)"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None
