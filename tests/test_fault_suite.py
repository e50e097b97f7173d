"""The fault suite's bad-input rows: real processes, real stores, real files (issue 14).

Every row runs the installed ``trainforge`` console script in a subprocess and checks the contract of a
fault: the exit code, one ``Error:`` line on stderr and no traceback, and the state of the store afterwards
(run status, artifacts, no partial output files). The signal rows (SIGTERM, SIGKILL to ``train`` and
``tune``) are ``test_fault_processes.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
from conftest import last_json, mlflow_client
from faults import FEATURES, IRIS, no_partial_files, one_line, store_runs, tf


# -- bad inputs: one line, nothing half-done ----------------------------------------------------------------
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One store for the rows (creating an MLflow database costs seconds): an MLP on iris with its ONNX
    file, the same MLP cut short (KILLED, with ``checkpoints/last.pt``) and a random forest. Rows that damage
    an artifact restore it afterwards."""
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("shared")
    mlp = tf(root, "train", "--model", "mlp", "--dataset", "iris", "--epochs", "3", "--quiet", "--json",
             "-p", "trainer.resume_every_s=0")
    forest = tf(root, "train", "--model", "random-forest", "--dataset", "iris", "--quiet", "--json", "--no-export")
    assert mlp.returncode == 0 and forest.returncode == 0, mlp.stderr + forest.stderr
    mlp, forest = last_json(mlp.stdout), last_json(forest.stdout)
    mlflow_client(root).set_terminated(mlp["run_id"], "KILLED")  # as if cut short: --resume accepts it
    return SimpleNamespace(root=root, mlp=mlp, forest=forest)


class Damage:
    """Replace a run's artifact for one row and put the original back afterwards."""

    def __init__(self, root: Path, run_id: str, name: str) -> None:
        (self.path,) = [p for p in (root / "mlruns").rglob(name) if run_id in str(p)]
        self.original = self.path.read_bytes()

    def truncate(self) -> None:
        self.path.write_bytes(self.original[:300])

    def restore(self) -> None:
        for other in self.path.parent.iterdir():
            if other.name.startswith("estimator.") and other != self.path:
                other.unlink()
        self.path.write_bytes(self.original)


def _evil_pickle(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Evil())


def _legacy_pickle(shared, out: Path, damage: list) -> list[str]:
    damage.append(Damage(shared.root, shared.forest["run_id"], "estimator.skops"))
    damage[0].path.unlink()  # a run written before skops, made hostile
    (damage[0].path.parent / "estimator.pkl").write_bytes(_evil_pickle(out / "PWNED"))
    return ["export", shared.forest["run_id"], "-o", str(out / "out.onnx")]


def _untrusted_skops(shared, out: Path, damage: list) -> list[str]:
    import skops.io
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import FunctionTransformer

    damage.append(Damage(shared.root, shared.forest["run_id"], "estimator.skops"))
    hostile = FunctionTransformer(func=os.system)  # a callable skops does not trust by default
    skops.io.dump({"model": RandomForestClassifier(), "f": hostile}, damage[0].path)
    return ["export", shared.forest["run_id"], "-o", str(out / "out.onnx")]


def _nan_late(shared, out: Path, damage: list) -> list[str]:
    import numpy as np
    import pandas as pd

    x = np.random.default_rng(0).normal(size=(60_000, 4)).astype("float32")
    x[50_001, 2] = np.nan  # row 50,002 of the data, after the first chunk was written
    pd.DataFrame(x, columns=FEATURES).to_csv(out / "in.csv", index=False)
    return ["predict", shared.mlp["onnx_path"], "-i", str(out / "in.csv"), "-o", str(out / "out.csv")]


def _header_only(shared, out: Path, damage: list) -> list[str]:
    (out / "in.csv").write_text(",".join(FEATURES) + "\n")
    return ["predict", shared.mlp["onnx_path"], "-i", str(out / "in.csv"), "-o", str(out / "out.csv")]


def _damaged(name: str, *command: str):
    def setup(shared, out: Path, damage: list) -> list[str]:
        damage.append(Damage(shared.root, shared.mlp["run_id"], name))
        damage[0].truncate()
        return [c.format(run=shared.mlp["run_id"], out=out) for c in command]

    return setup


def _damaged_onnx(shared, out: Path, damage: list) -> list[str]:
    damage.append(Damage(shared.root, shared.mlp["run_id"], "model.onnx"))
    data = bytearray(damage[0].original)
    middle = len(data) // 2
    data[middle:middle + 200] = os.urandom(200)  # can still pass onnx.checker and predict other labels
    damage[0].path.write_bytes(bytes(data))
    (out / "in.csv").write_text(",".join(FEATURES) + "\n5.1,3.5,1.4,0.2\n")
    return ["predict", f"runs:/{shared.mlp['run_id']}", "-i", str(out / "in.csv"), "-o", str(out / "out.csv")]


def _damaged_forest_config(shared, out: Path, damage: list) -> list[str]:
    """A run without a checkpoint (a scikit-learn estimator) whose config.yaml lost its sections."""
    damage.append(Damage(shared.root, shared.forest["run_id"], "config.yaml"))
    damage[0].path.write_text("model:\n  name: random-forest\n")
    return ["data", "--run", shared.forest["run_id"], "-o", str(out / "out.csv")]


def _file_as_folder(shared, out: Path, damage: list) -> list[str]:
    (out / "a-file.txt").write_text("not a folder")
    return ["train", *IRIS, "--tracking-uri", f"sqlite:///{out}/a-file.txt/mlflow.db"]


def _args(*args: str):
    return lambda shared, out, damage: [a.format(out=out) for a in args]


def _same_file(link: str):
    """``predict -i in.csv -o X`` where X is in.csv itself, a symbolic link to it or a hard link to it."""
    def setup(shared, out: Path, damage: list) -> list[str]:
        (out / "in.csv").write_text(",".join(FEATURES) + "\n5.1,3.5,1.4,0.2\n")
        target = out / "in.csv"
        if link == "symlink":
            (target := out / "link.csv").symlink_to("in.csv")
        elif link == "hardlink":
            os.link(out / "in.csv", target := out / "hard.csv")
        return ["predict", shared.mlp["onnx_path"], "-i", str(out / "in.csv"), "-o", str(target)]

    return setup


def _write(name: str, data: bytes, *command: str):
    def setup(shared, out: Path, damage: list) -> list[str]:
        (out / name).write_bytes(data)
        return [c.format(out=out) for c in command]

    return setup


#: id -> (set-up returning the command, exit code, text in the one line, existing output file); the rows
#: without an existing output file run in a fresh folder, the others against the shared store.
ROWS = {
    "p-seed-abc": (_args("train", *IRIS, "-p", "trainer.seed=abc"), 1, "trainer.seed must be an integer", None),
    "p-val-fraction-abc": (_args("train", *IRIS, "-p", "trainer.val_fraction=abc"), 1,
                           "trainer.val_fraction must be a number", None),
    "p-patience-abc": (_args("train", *IRIS, "-p", "trainer.patience=abc"), 1, "trainer.patience must be an integer",
                       None),
    "sqlite-under-a-file": (_file_as_folder, 1, "cannot create the folder", None),
    "unreachable-server": (_args("train", *IRIS, "--tracking-uri", "http://127.0.0.1:9"), 1,
                           "cannot use the MLflow tracking store 'http://127.0.0.1:9'", None),
    "data-bad-param": (_args("data", "--dataset", "iris", "-p", "trainer.val_fraction=abc", "-o", "{out}/out.csv"), 1,
                       "trainer.val_fraction must be a number", "out.csv"),
    "damaged-best-pt-export": (_damaged("best.pt", "export", "{run}", "-o", "{out}/out.onnx"), 1,
                               "best.pt: not a readable trainforge checkpoint", "out.onnx"),
    "damaged-last-pt-resume": (_damaged("last.pt", "train", "--resume", "{run}", "--quiet"), 1,
                               "last.pt: not a readable trainforge checkpoint", None),
    "legacy-pickle-export": (_legacy_pickle, 1, "no longer loads (a pickle can run code", "out.onnx"),
    "untrusted-skops-export": (_untrusted_skops, 1, "types trainforge does not trust", "out.onnx"),
    "predict-nan-row-50002": (_nan_late, 1, "in.csv: row 50002 (line 50003), column 'petal length (cm)': NaN", "out.csv"),
    "predict-header-only": (_header_only, 1, "in.csv: no rows", "out.csv"),
    "predict-damaged-onnx": (_damaged_onnx, 1, "does not match the SHA-256 recorded at export", "out.csv"),
    # issue 26. Before: rc 0 and the input replaced by the predictions; a 47-line traceback; training on `a` and
    # `a.1`; artifacts at the store's root; digits rows written for an iris run (or a 40/79-line traceback)
    "predict-output-is-input": (_same_file("same"), 1, "in.csv is the input file", "in.csv"),
    "predict-output-symlink": (_same_file("symlink"), 1, "link.csv (a link to ", "in.csv"),
    "predict-output-hardlink": (_same_file("hardlink"), 1, "hard.csv (a link to ", "in.csv"),
    "data-output-is-its-csv": (_args("data", "--dataset", "csv", "-p", "dataset.path={out}/in.csv", "-o",
                                     "{out}/in.csv"), 1, "in.csv is the input file", "in.csv"),
    "config-not-utf8": (_write("bad.yaml", b"model: mlp\ndataset:\n  name: iris\n# caf\xe9\n", "train", "--config",
                               "{out}/bad.yaml", "--epochs", "1", "--quiet"), 1, "bad.yaml: line 4 is not UTF-8", None),
    "csv-duplicate-header": (_write("dup.csv", b"a,b,a,label\n" + b"1,2,3,0\n2,3,4,1\n" * 10, "train", "--dataset", "csv",
                                    "-p", "dataset.path={out}/dup.csv", "--epochs", "1", "--quiet"), 1,
                             "dup.csv: line 1: column 'a' appears 2 times (columns 1, 3)", None),
    "experiment-dot": (_args("train", *IRIS, "--experiment", "."), 1, "experiment name '.' is not allowed", None),
    "experiment-dotdot": (_args("train", *IRIS, "--experiment", ".."), 1, "experiment name '..' is not allowed",
                          None),
    "data-run-damaged-config-no-checkpoint": (_damaged_forest_config, 1, "cannot tell which data it was trained on",
                                              "out.csv"),
}
FRESH = {"p-seed-abc", "p-val-fraction-abc", "p-patience-abc", "sqlite-under-a-file", "unreachable-server",
         "data-bad-param", "data-output-is-its-csv", "config-not-utf8", "csv-duplicate-header", "experiment-dot",
         "experiment-dotdot"}


def _snapshot(root: Path) -> set:
    return {(r.info.run_id, r.info.status, r.info.end_time) for r in store_runs(root)}


@pytest.mark.parametrize("row", list(ROWS))
def test_fault_row(workdir, shared, row):
    setup, code, text, existing = ROWS[row]
    cwd = workdir if row in FRESH else shared.root
    damage: list[Damage] = []
    before = _snapshot(shared.root)
    try:
        args = setup(shared, workdir, damage)
        if existing:
            (workdir / existing).write_text("GOOD\n")
        started = time.monotonic()
        done = tf(cwd, *args)
        seconds = time.monotonic() - started
    finally:
        for d in damage:
            d.restore()
    assert done.returncode == code, done.stderr
    line = one_line(done.stderr)
    assert text in line, line
    assert "weights_only" not in line
    if row in FRESH:  # the error came before a run (or a store) was opened
        assert not store_runs(workdir)
    assert _snapshot(shared.root) == before  # no run opened, ended or changed in the shared store
    if existing:
        assert (workdir / existing).read_text() == "GOOD\n"  # an existing output is left as it was
    no_partial_files(workdir)
    assert not (workdir / "PWNED").exists()  # no code from the store ran
    if row == "unreachable-server":
        assert seconds < 25, seconds


def test_outputs_are_written_whole(workdir, shared):
    data = tf(shared.root, "data", "--run", shared.mlp["run_id"], "-o", str(workdir / "rows.csv"))
    assert data.returncode == 0, data.stderr
    (workdir / "pred.csv").write_text("OLD\n")
    done = tf(shared.root, "predict", shared.mlp["onnx_path"], "-i", str(workdir / "rows.csv"),
              "-o", str(workdir / "pred.csv"), "--target", "target")
    assert done.returncode == 0, done.stderr
    assert len((workdir / "pred.csv").read_text().splitlines()) == 31  # header + the 30 test rows
    no_partial_files(workdir)


def test_no_silent_wrong_answer(workdir, shared):
    """Integer labels against class names are read as indices (said on stderr), never a silent accuracy of 0;
    exporting a run that did not finish says it was cut short."""
    from sklearn.datasets import load_iris

    load_iris(as_frame=True).frame.to_csv(workdir / "iris.csv", index=False)  # target 0/1/2
    done = tf(shared.root, "predict", shared.mlp["onnx_path"], "-i", str(workdir / "iris.csv"), "--target", "target",
              "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"]["accuracy"] > 0.6  # 3 epochs: far from 0, far from perfect
    (warning,) = done.stderr.strip().splitlines()
    assert "holds class indices 0..2, not the model's class names (setosa, versicolor, virginica)" in warning
    (workdir / "bad.csv").write_text(",".join([*FEATURES, "target"]) + "\n5.1,3.5,1.4,0.2,rose\n")
    bad = tf(shared.root, "predict", shared.mlp["onnx_path"], "-i", str(workdir / "bad.csv"), "--target", "target")
    assert bad.returncode == 1 and "matches none of the model's classes" in one_line(bad.stderr)

    export = tf(shared.root, "export", shared.mlp["run_id"], "-o", str(workdir / "m.onnx"))
    assert export.returncode == 0, export.stderr
    assert "is KILLED: training was cut short at epoch 3 of 3 planned; exporting its best epoch" in export.stderr
    assert (workdir / "m.onnx").stat().st_size > 0


def test_data_run_reads_the_config_its_checkpoint_carries(workdir, shared):
    """A damaged config.yaml is not the source: the checkpoint's config is (as for export and --resume). Before:
    digits rows for an iris run (the dataset fell back to the default), or a 40/79-line traceback."""
    damage = Damage(shared.root, shared.mlp["run_id"], "config.yaml")
    try:
        for text in ("model:\n  name: mlp\n", "dataset: {name: iris\n"):  # sections lost; not YAML at all
            damage.path.write_text(text)
            done = tf(shared.root, "data", "--run", shared.mlp["run_id"], "-o", str(workdir / "rows.csv"))
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == f"wrote 30 test rows of iris to {workdir / 'rows.csv'}"
            assert (workdir / "rows.csv").read_text().splitlines()[0] == ",".join([*FEATURES, "target"])
    finally:
        damage.restore()
