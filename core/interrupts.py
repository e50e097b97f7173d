"""SIGTERM handled like Ctrl-C.

Schedulers (Kubernetes, Slurm, ``docker stop``, systemd) stop a job with SIGTERM. :func:`install` makes
SIGTERM raise :class:`Terminated`, a ``KeyboardInterrupt`` subclass, in the main thread, so every path
that cleans up after Ctrl-C (the run ends KILLED, the best checkpoint is uploaded, the running trial is
marked FAIL) does the same after SIGTERM. Only the first SIGTERM raises; later ones are recorded and
ignored so they cannot interrupt that clean-up (a second ``docker stop`` within its grace period). The
CLI exits ``128 + signal`` (130 after Ctrl-C, 143 after SIGTERM), the shells' convention.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM was received: handled like Ctrl-C, reported as ``terminated (SIGTERM)``."""


_received: list[int] = []


def install() -> bool:
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns False (and does nothing) elsewhere
    or when SIGTERM is ignored (``nohup`` and friends keep their choice)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return False
    signal.signal(signal.SIGTERM, handle_sigterm)
    return True


def installed() -> bool:
    """True when SIGTERM is handled by this module."""
    return signal.getsignal(signal.SIGTERM) is handle_sigterm


def handle_sigterm(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
    """The SIGTERM handler: raise :class:`Terminated` the first time, record later ones."""
    first = not _received
    _received.append(signum)
    if first:
        raise Terminated("terminated (SIGTERM)")


def record(signum: int = signal.SIGTERM) -> None:
    """Note that this process is stopping because of ``signum`` received elsewhere (e.g. by a worker)."""
    _received.append(signum)


def received() -> int | None:
    """The first terminating signal received by this process (``signal.SIGTERM``), else None."""
    return _received[0] if _received else None


def describe(exc: BaseException) -> str:
    """``terminated (SIGTERM)`` or ``interrupted (Ctrl-C)``: what ended a run, for its error tag and the CLI."""
    return "terminated (SIGTERM)" if isinstance(exc, Terminated) or received() else "interrupted (Ctrl-C)"


def exit_code(exc: BaseException | None = None) -> int:
    """The exit status of a process stopped by ``exc``: 143 after SIGTERM, else 130 (Ctrl-C)."""
    if isinstance(exc, Terminated) or received() == signal.SIGTERM:
        return 128 + signal.SIGTERM
    return 128 + signal.SIGINT
