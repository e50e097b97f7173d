"""Ctrl-C and SIGTERM, raised where they are safe to raise.

Schedulers (Kubernetes, Slurm, ``docker stop``, systemd) stop a job with SIGTERM. :func:`install` makes
SIGTERM raise :class:`Terminated`, a ``KeyboardInterrupt`` subclass, in the main thread, so every path
that cleans up after Ctrl-C (the run ends KILLED, the best checkpoint is uploaded, the running trial is
marked FAIL) does the same after SIGTERM. Only the first SIGTERM raises; later ones are recorded and
ignored so they cannot interrupt that clean-up (a second ``docker stop`` within its grace period). The
CLI exits ``128 + signal`` (130 after Ctrl-C, 143 after SIGTERM), the shells' convention.

Neither signal raises inside Python's import system. Python runs a signal handler wherever the main
thread is, and a ``KeyboardInterrupt`` raised inside ``importlib._bootstrap`` (e.g. in the weak-reference
callback that drops a module lock, where it is printed as "Exception ignored" and lost) can leave the
global import lock held by the main thread: every other thread that then imports anything (MLflow's
writers, trainforge's metric writer) waits for ever, and so does the run that joins them. A signal that
arrives while an import is running is therefore held and delivered again 10 ms later, until the import has
finished.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM was received: handled like Ctrl-C, reported as ``terminated (SIGTERM)``."""


_received: list[int] = []
_IMPORT_SYSTEM = "<frozen importlib"
_RETRY_SECONDS = 0.01


def install() -> bool:
    """Make SIGTERM raise :class:`Terminated` and Ctrl-C ``KeyboardInterrupt`` in the main thread, outside
    imports. Returns False (and does nothing) elsewhere than the main thread. A signal that is ignored
    (``nohup`` and friends) or has a handler of its own keeps it: SIGINT is taken over only from Python's
    ``signal.default_int_handler``."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handle_sigint)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return False
    signal.signal(signal.SIGTERM, handle_sigterm)
    return True


def raises(signum: int) -> bool:
    """True when ``signum`` currently raises ``KeyboardInterrupt`` in the main thread: SIGINT with Python's
    default handler or :func:`handle_sigint`, SIGTERM with :func:`handle_sigterm`."""
    if signum == signal.SIGINT:
        return signal.getsignal(signal.SIGINT) in (signal.default_int_handler, handle_sigint)
    return signal.getsignal(signum) is handle_sigterm


def handle_sigint(signum: int = signal.SIGINT, frame: FrameType | None = None) -> None:
    """The Ctrl-C handler: ``KeyboardInterrupt``, like Python's own, but never inside an import."""
    if _importing(frame):
        _deliver_later(signum)
        return
    raise KeyboardInterrupt


def handle_sigterm(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
    """The SIGTERM handler: raise :class:`Terminated` the first time, record later ones; never inside an
    import (see the module's docstring)."""
    if _importing(frame):
        _deliver_later(signum)
        return
    first = not _received
    _received.append(signum)
    if first:
        raise Terminated("terminated (SIGTERM)")


def _importing(frame: FrameType | None) -> bool:
    """True when ``frame`` or one of its callers runs in ``importlib._bootstrap`` (a module being found,
    loaded or executed, or a module lock being released)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(_IMPORT_SYSTEM):
            return True
        frame = frame.f_back
    return False


def _deliver_later(signum: int) -> None:
    """Send ``signum`` to this process again in 10 ms, from a daemon thread (which imports nothing)."""
    timer = threading.Timer(_RETRY_SECONDS, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


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
