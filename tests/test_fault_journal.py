"""The fault suite, continued (issue 26): an Optuna journal file torn by a crash mid-write, real studies in
real journal files, run by the console script.

Before: resuming printed a 58-line ``JSONDecodeError`` traceback after appending the new record onto the
partial line, and from then on every study in the file, new ones included, failed to open.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from faults import one_line, tf

TUNE = ["tune", "--model", "mlp", "--dataset", "iris", "--epochs", "2", "--no-export", "--quiet", "--study", "s"]
JOURNAL = Path("mlruns") / "optuna" / "journal.log"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, bytes]:
    """A study of two finished trials; returns the folder and its journal's bytes."""
    root = tmp_path_factory.mktemp("journal")
    done = tf(root, *TUNE, "--n-trials", "2")
    assert done.returncode == 0, done.stderr
    return root, (root / JOURNAL).read_bytes()


def _copy(study, workdir: Path, data: bytes) -> Path:
    """The study's store (its MLflow parent run, its journal) copied here, the journal replaced by ``data``."""
    root, _ = study
    shutil.copytree(root / "mlruns", workdir / "mlruns")
    journal = workdir / JOURNAL
    journal.write_bytes(data)
    return journal


def _complete(workdir: Path) -> int:
    import optuna

    from trainforge.tuning.journal import open_journal

    storage = open_journal(workdir / JOURNAL)
    trials = optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
    return sum(t.state.name == "COMPLETE" for t in trials)


def test_a_torn_last_line_is_refused_never_written_onto_and_repaired(workdir, study):
    _, good = study
    lines = good.splitlines(keepends=True)
    torn = good[:-40]  # the last record cut 40 bytes short, as a crash or a full disk leaves it
    journal = _copy(study, workdir, torn)

    done = tf(workdir, *TUNE, "--n-trials", "1")
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert line == (f"Error: Optuna journal {JOURNAL}: line {len(lines)} is torn (a write cut short, e.g. by a crash "
                    f"or a full disk); repair it (a backup is kept): trainforge runs --repair-journal {JOURNAL}")
    assert journal.read_bytes() == torn  # nothing appended onto the partial line

    repaired = tf(workdir, "runs", "--repair-journal", str(JOURNAL), "--json")
    assert repaired.returncode == 0, repaired.stderr
    report = json.loads(repaired.stdout)
    assert report["dropped"] == [len(lines)] and report["kept"] == len(lines) - 1 and report["salvaged"] == []
    assert Path(workdir / report["backup"]).read_bytes() == torn  # the backup is the file as it was
    assert journal.read_bytes() == b"".join(lines[:-1])
    assert _complete(workdir) >= 1  # finished trials are still there (the torn record was the last one's end)
    again = tf(workdir, "runs", "--repair-journal", str(JOURNAL))
    assert again.returncode == 0 and "nothing changed" in again.stdout

    resumed = tf(workdir, *TUNE, "--n-trials", "1", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert _complete(workdir) == json.loads(resumed.stdout.splitlines()[-1])["n_complete"]


def test_a_journal_an_old_writer_appended_onto_a_torn_line(workdir, study):
    """What the old code left: the next record glued onto the torn one. The file and line are named; the
    repair drops the torn bytes and keeps the glued record."""
    _, good = study
    lines = good.splitlines(keepends=True)
    glued = b"".join(lines[:-2]) + lines[-2][:30] + lines[-1]
    journal = _copy(study, workdir, glued)
    done = tf(workdir, *TUNE, "--n-trials", "1")
    assert done.returncode == 1, done.stderr
    assert f"Optuna journal {JOURNAL}: line {len(lines) - 1} is not a JSON record (damaged)" in one_line(done.stderr)
    assert journal.read_bytes() == glued
    repaired = tf(workdir, "runs", "--repair-journal", str(JOURNAL), "--json")
    report = json.loads(repaired.stdout)
    assert report["salvaged"] == [len(lines) - 1] and report["dropped"] == []
    assert journal.read_bytes() == b"".join(lines[:-2]) + lines[-1]


def test_an_append_never_lands_on_a_tail_another_process_tore(tmp_path):
    """A journal opened whole, then torn by another process: the next append refuses, the file unchanged."""
    import optuna

    from trainforge.tuning.journal import JournalDamaged, open_journal

    path = tmp_path / "j.log"
    study = optuna.create_study(storage=open_journal(path), study_name="x")
    with open(path, "ab") as fh:
        fh.write(b'{"op_code":4,"worker_id":"w","study_id":0,"datetime_st')
    before = path.read_bytes()
    with pytest.raises(JournalDamaged, match=r"j\.log: line 2 is torn"):
        study.ask()
    assert path.read_bytes() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (mount -t tmpfs)")
def test_an_append_that_finds_the_disk_full_leaves_no_partial_record(tmp_path):
    import optuna

    from trainforge.tuning.journal import open_journal

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs")
    try:
        path = disk / "j.log"
        study = optuna.create_study(storage=open_journal(path), study_name="x")
        before = path.read_bytes()
        stat = os.statvfs(disk)
        with open(disk / "filler", "wb", buffering=0) as fh:  # all but 8 KiB of the device
            fh.write(b"\0" * (stat.f_bavail * stat.f_frsize - 8192))
        with pytest.raises(OSError, match="No space left"):
            study.set_user_attr("note", "x" * 50_000)
        assert path.read_bytes() == before  # the partial record was cut back
        (disk / "filler").unlink()
        assert open_journal(path)  # opens: no torn line
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
