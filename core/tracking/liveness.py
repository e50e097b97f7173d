"""Is the process that owns a run or a trial still there? One answer for ``runs --stale`` and the tuning
workers alike.

A process is named by its host, its pid and, on Linux, its start time: field 22 of ``/proc/<pid>/stat``,
in clock ticks since boot (``proc(5)``). The start time tells a pid reused by an unrelated process from
the one that was recorded. A process on another host cannot be checked from here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Process:
    """A process as runs and trials record it: ``host`` name, ``pid`` and ``start`` (clock ticks since
    boot as a string; ``""`` where ``/proc`` is not available)."""

    host: str
    pid: int
    start: str = ""


def start_ticks(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or ``""``
    when there is no such process or no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # fields after "(comm)" start at field 3


def this_process() -> Process:
    """The calling process: this host's name, ``os.getpid()`` and its start time."""
    pid = os.getpid()
    return Process(socket.gethostname(), pid, start_ticks(pid))


def alive(host: str | None, pid: int | str | None, start: str | None = "") -> bool | None:
    """Whether process ``pid`` recorded on ``host`` (with start time ``start``, if known) still runs.

    True when a process with that pid exists on this host (another user's too) and, when both start times
    are known, started at the recorded time; False when it is gone or the pid now belongs to another
    process; None when it cannot be told from here: ``host`` is another machine, or ``host``/``pid`` are
    missing or not a pid.
    """
    if not host or pid is None or not str(pid).isdigit():
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = start_ticks(int(pid))
    return not (start and now and now != start)
