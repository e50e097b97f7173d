"""Ctrl-C and SIGTERM are raised outside Python's import system (trainforge.interrupts): a
``KeyboardInterrupt`` inside importlib can be lost and leave the import lock held, which hung a
``trainforge train`` interrupted while it was still importing (its metric writer thread waited for ever)."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from trainforge import interrupts


@pytest.fixture
def handlers(monkeypatch):
    """Python's default SIGINT handler (pytest may have inherited SIGINT ignored from a background shell),
    trainforge's handlers installed on top, everything restored afterwards."""
    previous = {sig: signal.getsignal(sig) for sig in interrupts.STOPPING}
    monkeypatch.setattr(interrupts, "_received", [])
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert interrupts.install()
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("sig, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, interrupts.Terminated),
                                         (signal.SIGHUP, interrupts.Terminated)])
def test_a_signal_during_an_import_is_raised_once_the_import_has_finished(tmp_path, monkeypatch, handlers, sig,
                                                                         raised):
    name = f"slow_module_{sig.name.lower()}"
    (tmp_path / f"{name}.py").write_text(
        f"import os, signal, time\nos.kill(os.getpid(), signal.{sig.name})\ntime.sleep(0.3)\nLOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    start = time.monotonic()
    with pytest.raises(raised):
        __import__(name)
        time.sleep(5)  # the held signal comes back while this sleeps
    # The import was not cut short: Python's own handler would have raised inside the module's body and
    # left no module behind.
    assert sys.modules[name].LOADED is True
    assert time.monotonic() - start < 2
    assert interrupts.raises(signal.SIGINT) and interrupts.raises(signal.SIGTERM)


def test_outside_an_import_a_signal_raises_at_once(handlers):
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert time.monotonic() - start < 1


def test_an_ignored_signal_or_a_handler_of_its_own_is_kept(monkeypatch):
    previous = {sig: signal.getsignal(sig) for sig in interrupts.STOPPING}
    try:
        for sig in interrupts.STOPPING:  # nohup, a background job
            signal.signal(sig, signal.SIG_IGN)
        assert interrupts.install() is False
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in interrupts.STOPPING)
        assert not interrupts.raises(signal.SIGINT)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_sighup_is_reported_and_exits_like_the_shells_say(handlers):
    with pytest.raises(interrupts.Terminated) as caught:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)
    assert caught.value.signum == signal.SIGHUP
    assert interrupts.describe(caught.value) == "terminated (SIGHUP)" and interrupts.exit_code(caught.value) == 129
    assert interrupts.describe(caught.value) in interrupts.REASONS
    os.kill(os.getpid(), signal.SIGTERM)  # a later signal is recorded, not raised: the clean-up runs on
    time.sleep(0.2)
    assert interrupts.received() == signal.SIGHUP
