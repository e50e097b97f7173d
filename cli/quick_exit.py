"""End the ``trainforge`` process as soon as its command is done.

After a command that loaded torch, the ONNX exporter and MLflow, Python's interpreter shutdown (tearing
down ~10,000 modules and their objects, then C++ static destructors) takes 1.5-2 s on 2 cores, after
all output is written and the run is closed (``benchmarks/RESULTS_history.md``). :func:`run` skips that
teardown only:

- it registers an :mod:`atexit` handler before the command runs, so it runs after every handler
  registered later (MLflow's, multiprocessing's, ... run first, in the usual order) and after Python has
  joined the non-daemon threads;
- that handler flushes ``logging``, stdout and stderr, then ends the process with ``os._exit`` and the
  command's exit code (click's conventions, unchanged).

An exception that escapes the command (a bug) takes Python's normal path: traceback, exit 1, full
shutdown. ``TRAINFORGE_QUICK_EXIT=0`` turns this off (e.g. to debug a shutdown problem).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable
from typing import Any


def _code(value: Any) -> int:
    """The process exit code of ``SystemExit(value)``, as Python computes it (a message is printed, exit 1)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


_STANDALONE = {"on": False}


def standalone() -> bool:
    """Whether this process is the ``trainforge`` program itself (its ``main``), not a Python process that
    runs a command in process (a test's ``CliRunner``, a notebook): only then may a command fork helpers
    (:mod:`trainforge.exporting.worker`) or end the process."""
    return _STANDALONE["on"]


def run(command: Callable[[], Any]) -> None:
    """Run ``command`` (a click command in standalone mode, which ends with ``SystemExit``), then exit quickly."""
    _STANDALONE["on"] = True
    if os.environ.get("TRAINFORGE_QUICK_EXIT", "1") == "0":
        command()
        return
    state: dict[str, int] = {}

    def finish() -> None:
        if "code" not in state:  # not our SystemExit (e.g. an uncaught exception): the normal shutdown
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (e.g. `| head`): nothing left to deliver
                pass
        os._exit(state["code"])

    atexit.register(finish)
    try:
        command()
    except SystemExit as exc:
        state["code"] = _code(exc.code)
        raise SystemExit(state["code"]) from None
