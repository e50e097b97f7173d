"""Ctrl-C, SIGTERM and SIGHUP, raised where they are safe to raise.

Schedulers (Kubernetes, Slurm, ``docker stop``, systemd) stop a job with SIGTERM; a terminal or an ssh
session that closes sends SIGHUP (unless the job runs under ``nohup``). :func:`install` makes both raise
:class:`Terminated`, a ``KeyboardInterrupt`` subclass, in the main thread, so every path that cleans up
after Ctrl-C (the run ends KILLED, the best checkpoint is uploaded, the running trial is marked FAIL) does
the same after SIGTERM or SIGHUP. Only the first terminating signal raises; later ones are recorded and
ignored so they cannot interrupt that clean-up (a second ``docker stop`` within its grace period). The
CLI exits ``128 + signal`` (130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP), the shells' convention.

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
    """SIGTERM or SIGHUP was received: handled like Ctrl-C, reported as ``terminated (SIGTERM)`` or
    ``terminated (SIGHUP)``; ``signum`` is the signal."""

    def __init__(self, *args: object, signum: int = signal.SIGTERM) -> None:
        super().__init__(*args)
        self.signum = signum


#: the signals that stop a run as Ctrl-C does; each raises :class:`Terminated` once :func:`install` ran
TERMINATING = (signal.SIGTERM, signal.SIGHUP)
#: every signal that ends a run KILLED: Ctrl-C and :data:`TERMINATING`
STOPPING = (signal.SIGINT, *TERMINATING)
#: the reasons :func:`describe` gives, as a run's ``trainforge.error`` tag (a run so ended is KILLED)
REASONS = ("interrupted (Ctrl-C)", "terminated (SIGTERM)", "terminated (SIGHUP)")

_received: list[int] = []
_IMPORT_SYSTEM = "<frozen importlib"
_RETRY_SECONDS = 0.01


def install() -> bool:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` and Ctrl-C ``KeyboardInterrupt`` in the main thread,
    outside imports. Returns False (and does nothing) elsewhere than the main thread, and when SIGTERM is
    ignored. A signal that is ignored (``nohup`` ignores SIGHUP) or has a handler of its own keeps it: SIGINT
    is taken over only from Python's ``signal.default_int_handler``, SIGHUP only from ``SIG_DFL``."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handle_sigint)
    if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, handle_sigterm):
        signal.signal(signal.SIGHUP, handle_sigterm)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return False
    signal.signal(signal.SIGTERM, handle_sigterm)
    return True


def raises(signum: int) -> bool:
    """True when ``signum`` currently raises ``KeyboardInterrupt`` in the main thread: SIGINT with Python's
    default handler or :func:`handle_sigint`, SIGTERM or SIGHUP with :func:`handle_sigterm`."""
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
    """The SIGTERM and SIGHUP handler: raise :class:`Terminated` the first time, record later ones; never
    inside an import (see the module's docstring)."""
    if _importing(frame):
        _deliver_later(signum)
        return
    first = not _received
    _received.append(signum)
    if first:
        raise Terminated(_terminated(signum), signum=signum)


def _terminated(signum: int) -> str:
    return f"terminated ({signal.Signals(signum).name})"


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
    """The first terminating signal received by this process (``signal.SIGTERM``, ``signal.SIGHUP``), else None."""
    return _received[0] if _received else None


def _signum(exc: BaseException | None) -> int:
    if received():
        return received()
    return getattr(exc, "signum", signal.SIGTERM) if isinstance(exc, Terminated) else signal.SIGINT


def describe(exc: BaseException | None = None) -> str:
    """``terminated (SIGTERM)``, ``terminated (SIGHUP)`` or ``interrupted (Ctrl-C)`` (one of :data:`REASONS`):
    what ended a run, for its error tag and the CLI."""
    signum = _signum(exc)
    return "interrupted (Ctrl-C)" if signum == signal.SIGINT else _terminated(signum)


def exit_code(exc: BaseException | None = None) -> int:
    """The exit status of a process stopped by ``exc``: 143 after SIGTERM, 129 after SIGHUP, else 130 (Ctrl-C)."""
    return 128 + _signum(exc)
