"""Optuna journal files that a crash or a full disk cut short: found, refused in one line, repaired.

Optuna's ``JournalFileBackend`` (Optuna 5, ``optuna/storages/journal/_file.py``) keeps one JSON record per
line and appends records under a file lock, as one ``write`` of ``json + "\\n"`` then ``fsync``. A process
killed in that write, or a write that hit a full disk, leaves a **torn** last line: bytes without their end
of line. Optuna's reader skips such a last line; its writer then appends the next record onto it, which makes
one undecodable line, after which every read of the file raises ``JSONDecodeError`` (every study in it, new
ones included, fails to open). So:

- :func:`open_journal` refuses a journal whose last line is torn, or that holds an undecodable line, with
  one line naming the file and the line and the repair command; it writes nothing;
- :class:`CheckedJournalBackend` never appends onto a partial line (another process may tear the tail
  while this one runs) and, when its own append fails (``ENOSPC``), cuts the file back to where it was;
- :func:`repair` (``trainforge runs --repair-journal PATH``) copies the file to ``PATH.<time>.bak`` and
  rewrites it without the torn bytes. A record that an old writer appended onto a torn line is kept (it was
  written by a process whose view never held the torn record, so the log stays consistent); a torn
  fragment is dropped. Finished trials stay reachable.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from trainforge.errors import TrainforgeError

#: how every record Optuna 5 writes begins (``json.dumps({"op_code": ..., ...}, separators=(",", ":"))``)
RECORD_START = b'{"op_code":'


class JournalDamaged(TrainforgeError):
    """A journal file holds a torn or undecodable line; the message names the file, the line and the repair."""


def repair_hint(path: str | Path) -> str:
    return f"repair it (a backup is kept): trainforge runs --repair-journal {path}"


def _damaged(path: str | Path, line: int, what: str) -> JournalDamaged:
    return JournalDamaged(f"Optuna journal {path}: line {line} {what}; {repair_hint(path)}")


def torn_tail(path: str | Path) -> int | None:
    """The 1-based number of the last line of ``path`` if it lacks its end of line (a torn record), else None."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return None
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return None
        fh.seek(0)
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) + 1


def last_record(path: str | Path) -> bytes:
    """The last line of ``path`` without its end of line, read backwards from the end (``b""`` if empty)."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            end -= fh.read(1) == b"\n"
        tail, pos = b"", end
        while pos > 0 and b"\n" not in tail:
            step = min(pos, 1 << 16)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
        tail = tail[:end - pos]
        return tail[tail.rfind(b"\n") + 1:]


def first_damage(path: str | Path) -> tuple[int, str] | None:
    """``(line, what)`` of the first torn or undecodable line of ``path`` (1-based), else None."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith(b"\n"):
                return number, f"is torn ({len(line)} bytes without an end of line: a write cut short)"
            if not isinstance(_record(line), dict):
                return number, "is not a JSON record (damaged)"
    return None


def _record(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def open_journal(path: str | Path) -> Any:
    """An Optuna ``JournalStorage`` on the journal file ``path`` (created if missing) through
    :class:`CheckedJournalBackend`. Raises :class:`JournalDamaged` (one line: the file, the line, the repair
    command) for a torn last line or an undecodable line, before anything is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and (line := torn_tail(path)) is not None:
        raise _damaged(path, line, "is torn (a write cut short, e.g. by a crash or a full disk)")
    if path.exists() and (last := last_record(path)) and not isinstance(_record(last), dict):
        raise _damaged(path, *(first_damage(path) or (0, "is damaged")))  # Optuna reads past it, then fails
    try:
        return optuna.storages.JournalStorage(CheckedJournalBackend(str(path)))
    except ValueError:  # JSONDecodeError, or Optuna's "Invalid log format."
        found = first_damage(path)
        if found is None:
            raise
        raise _damaged(path, *found) from None


class CheckedJournalBackend(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file backend whose appends refuse a torn tail (:class:`JournalDamaged`) and undo their
    own partial write (an ``OSError`` such as ``ENOSPC`` leaves the file as it was, then propagates)."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        self._lock.acquire()  # Optuna's own lock (JournalFileSymlinkLock), as its append_logs takes it
        try:
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                size = os.fstat(fd).st_size
                if size and (line := torn_tail(self._file_path)) is not None:
                    raise _damaged(self._file_path, line, "is torn (another process's write was cut short)")
                try:
                    view = memoryview(data)
                    while view:  # os.write may write less than asked (a full disk); no buffer to flush later
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError:  # e.g. no space left: leave no partial record behind
                    os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)
        finally:
            self._lock.release()


@dataclass
class Repair:
    """What :func:`repair` did: the backup's path, the lines kept, and the dropped lines (1-based)."""

    path: str
    backup: str | None
    kept: int
    dropped: list[int]
    salvaged: list[int]  # lines whose torn prefix was dropped and whose appended record was kept


def repair(path: str | Path) -> Repair:
    """Drop the torn bytes of the Optuna journal ``path`` (see the module docstring), under the journal's
    own lock, after copying it to ``PATH.<YYYYmmdd-HHMMSS>.bak``. A sound journal is left untouched
    (``backup`` None). Raises :class:`TrainforgeError` when ``path`` is not a file."""
    from trainforge.atomic import atomic_output

    path = Path(path)
    if not path.is_file():
        raise TrainforgeError(f"no Optuna journal file {path}")
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        if first_damage(path) is None:
            return Repair(str(path), None, _count_lines(path), [], [])
        backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        shutil.copy2(path, backup)
        kept, dropped, salvaged = 0, [], []
        with atomic_output(path) as tmp, open(path, "rb") as src, open(tmp, "wb") as out:
            for number, line in enumerate(src, start=1):
                if line.endswith(b"\n") and isinstance(_record(line), dict):
                    out.write(line)
                    kept += 1
                    continue
                start = line.rfind(RECORD_START)
                if line.endswith(b"\n") and start > 0 and isinstance(_record(line[start:]), dict):
                    out.write(line[start:])  # an old writer's record appended onto the torn one
                    kept += 1
                    salvaged.append(number)
                else:
                    dropped.append(number)
            out.flush()
            os.fsync(out.fileno())
        return Repair(str(path), str(backup), kept, dropped, salvaged)
    finally:
        lock.release()


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
