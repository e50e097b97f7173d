"""Output files that appear whole or not at all.

:func:`atomic_output` yields a temporary path in the destination's folder (same file system, so the
final ``os.replace`` is an atomic rename, POSIX ``rename(2)``); the destination is replaced only when
the block succeeds. On any exception, Ctrl-C included, the temporary file is removed and an existing
destination is left exactly as it was, so a reader never sees a partial file. :func:`check_not_input`
refuses an output that is one of the command's inputs (the same file, through a symbolic or hard link too).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block ends without error.

    The file gets the mode an ordinary ``open(path, "w")`` would give it (an existing file's mode, else
    0o666 minus the umask). Missing parent folders are created. The block may leave the temporary file
    absent (nothing is then written and ``path`` is untouched).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _mode(path))
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_not_input(output: str | Path | None, *inputs: str | Path | None) -> None:
    """Raise :class:`~trainforge.errors.TrainforgeError` when ``output`` is the same file as one of ``inputs``
    (``os.path.samefile``: same device and inode, so symbolic and hard links count): writing it would replace
    the data being read. A missing ``output`` (a new file) or ``None`` passes."""
    from trainforge.errors import TrainforgeError

    for source in inputs:
        if output is None or source is None:
            continue
        try:
            same = os.path.samefile(output, source)
        except OSError:  # one of them does not exist (yet): not the same file
            continue
        if same:
            how = "" if Path(output).absolute() == Path(source).absolute() else f" (a link to {source})"
            raise TrainforgeError(f"the output {output}{how} is the input file; writing it would replace the "
                                  "data being read: choose another output path")


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
