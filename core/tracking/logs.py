"""How a trainforge process logs: one home for the CLI and the tuning workers it spawns.

A user mistake or an interrupted run is one ``Error:``/``Aborted:`` line (the CLI's); the libraries under the
store (MLflow, alembic, SQLAlchemy, urllib3) log their own view of the same failure, with tracebacks, unless
told otherwise. :func:`configure` quiets them below ``-vv``.
"""

from __future__ import annotations

import logging
import os

#: loggers that report, at ERROR and with a traceback, a database failure the caller then raises (a full
#: disk), or a cursor closed under a Ctrl-C/SIGTERM that trainforge reports in one line: silent unless ``-v``
RAISED_ELSEWHERE = ("mlflow.store.db.utils", "sqlalchemy.pool")


def configure(verbose: int) -> None:
    """Logging of this process: WARNING by default, INFO with ``verbose`` 1 (``-v``), DEBUG with 2 (``-vv``).

    MLflow and alembic never log below WARNING; :data:`RAISED_ELSEWHERE` is silent without ``-v``; urllib3's
    retry warnings (an unreachable tracking server) show only with ``-v``. Sets MLflow's environment
    defaults (no artifact progress bar, no run URL on stdout, MLflow's own handler at WARNING without ``-v``),
    which a spawned worker inherits. Values the user set are left alone.
    """
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not verbose:
        for name in RAISED_ELSEWHERE:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger("urllib3").setLevel(logging.ERROR if not verbose else level)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is for our output (--json)
    if not verbose:  # MLflow configures its own handler at import, at INFO unless told otherwise
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def verbosity(level: int) -> int:
    """The ``verbose`` count of a logging level (WARNING and above 0, INFO 1, DEBUG 2), for a spawned worker
    configured from its parent's effective level."""
    return 0 if level >= logging.WARNING else 1 if level >= logging.INFO else 2
