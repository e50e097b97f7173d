"""Fault-suite rows for a store that cannot be written: real read-only mounts, not permission bits (the tests
run as root here, and root writes through ``chmod``). Each command runs in its own mount namespace
(``unshare -m``) where part of the store is bind-mounted read-only; without that privilege the rows skip.

Each row asserts the exit code, one ``Error:`` line and no traceback, and the store afterwards (no run
opened, or the run FAILED with its checkpoint error). Reading a read-only store keeps working.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest
from conftest import last_json
from faults import EXE, IRIS, _env, one_line, store_runs, tf


def _can_mount() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               "mount -t tmpfs none /mnt && mount -o remount,ro /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _can_mount(), reason="needs unshare -m and mount (CAP_SYS_ADMIN)")


def read_only(workdir, mounted: str, *args: str, after: str | None = None) -> subprocess.CompletedProcess:
    """Run ``trainforge *args`` in ``workdir`` with ``mounted`` (relative) read-only: at once, or only once a
    file matching the glob ``after`` exists (the store turns read-only in the middle of a run)."""
    command = shlex.join([EXE, *args])
    bind = f"mount --bind {mounted} {mounted}"
    remount = f"mount -o remount,bind,ro {mounted}"
    if after is None:
        script = f"{bind} && {remount} && exec {command}"
    else:
        script = (f"{bind} || exit 99; {command} & pid=$!; "
                  f"while ! ls {after} >/dev/null 2>&1; do kill -0 $pid || break; sleep 0.05; done; "
                  f"{remount}; wait $pid")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=workdir,
                          env=_env(workdir), capture_output=True, text=True, timeout=300)
    assert done.returncode != 99, done.stderr
    return done


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ro-store")
    done = tf(root, "train", *IRIS, "--json")
    assert done.returncode == 0, done.stderr
    (root / "in.csv").write_text("sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n"
                                 "5.1,3.5,1.4,0.2\n")
    return root, last_json(done.stdout)["run_id"]


#: id -> (what is mounted read-only, text of the one line). Before: exit 1 with a 43-line traceback
#: (OSError on mlflow.db.lock), 228 lines and 5 tracebacks (SQLite's "attempt to write a readonly database"),
#: 118 lines and 3 tracebacks plus a FAILED run (read-only artifact folder).
ROWS = {
    "ro-mlruns": ("mlruns", "cannot create the lock file"),
    "ro-sqlite-file": ("mlruns/mlflow.db", "mlflow.db is on a read-only file system"),
    "ro-artifacts": ("mlruns/artifacts", "artifacts/trainforge is on a read-only file system"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_read_only_store_is_one_line_before_a_run_opens(store, row):
    root, _ = store
    mounted, text = ROWS[row]
    before = {r.info.run_id for r in store_runs(root)}
    done = read_only(root, mounted, "train", *IRIS)
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert "cannot use the MLflow tracking store" in line and text in line, line
    assert {r.info.run_id for r in store_runs(root)} == before  # no run opened, none left FAILED


def test_a_read_only_store_can_still_be_read(store):
    root, run_id = store
    done = read_only(root, "mlruns", "predict", f"runs:/{run_id}", "-i", "in.csv", "--json")
    assert done.returncode == 0, done.stderr
    assert last_json(done.stdout)["rows"] == 1


@pytest.mark.slow
def test_store_turning_read_only_mid_run(workdir):
    """The artifact folder becomes read-only once the first checkpoint is up: the run ends FAILED, and the
    command says so in its last line (no traceback)."""
    (workdir / "mlruns" / "artifacts").mkdir(parents=True)
    done = read_only(workdir, "mlruns/artifacts", "train", "--model", "mlp", "--dataset", "digits", "--epochs", "300",
                     "--patience", "0", "--quiet", "-p", "trainer.resume_every_s=0",  # upload after every epoch
                     after="mlruns/artifacts/*/*/artifacts/checkpoints/last.pt")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    (run,) = store_runs(workdir)
    assert lines[-1].startswith("Error: cannot write ") and lines[-1].endswith(
        f": read-only file system; run {run.info.run_id} ended FAILED without a best checkpoint"), lines
    assert ".artifact.uploading." not in lines[-1]  # the destination is named, not MLflow's staging file
    assert run.info.status == "FAILED" and "Read-only file system" in run.data.tags["trainforge.error"]
