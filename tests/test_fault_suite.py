"""The fault suite: real processes, real signals, real stores (issue 14).

Every row runs the installed ``trainforge`` console script in a subprocess and checks the contract of a
fault: the exit code, one ``Error:``/``Aborted:`` line on stderr and no traceback, and the state of the
store afterwards (run status, artifacts, no partial output files). Children that get signals start with
SIGINT/SIGTERM restored to SIG_DFL (a process started from a non-interactive shell inherits SIGINT
ignored), and the tests wait for a file the run writes (the run's checkpoint) instead of sleeping.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import last_json, mlflow_client

EXE = shutil.which("trainforge", path=str(Path(sys.executable).parent)) or shutil.which("trainforge")
IRIS = ["--model", "mlp", "--dataset", "iris", "--epochs", "2", "--quiet"]
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    (workdir / "tmp").mkdir(exist_ok=True)
    return {**env, "MLFLOW_LOGGING_LEVEL": "WARNING", "TMPDIR": str(workdir / "tmp"), **extra}


def start(workdir: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], cwd=workdir, env=_env(workdir, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)


def tf(workdir: Path, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    proc = start(workdir, *args, **env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line(err: str, prefix: str = "Error: ") -> str:
    """The stderr contract: no traceback, exactly one ``prefix`` line; other lines only the run's start."""
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(prefix)]
    others = [line for line in lines if not line.startswith(prefix)]
    assert len(errors) == 1, err
    assert all(line.startswith("run ") and line.endswith(" started") for line in others), err
    return errors[0]


def wait_for(pattern: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    """Wait until a file matching ``pattern`` exists (the run wrote it); fail if the process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = glob.glob(pattern)
        if found:
            return found[0]
        assert proc.poll() is None, f"exited {proc.returncode} first:\n{proc.communicate()[1]}"
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear within {timeout} s")


def store_runs(workdir: Path) -> list:
    if not (workdir / "mlruns" / "mlflow.db").exists():
        return []
    client = mlflow_client(workdir)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def artifacts(workdir: Path, run_id: str, folder: str = "checkpoints") -> set[str]:
    return {a.path for a in mlflow_client(workdir).list_artifacts(run_id, folder)}


def no_partial_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".part")], sorted(os.listdir(folder))


LAST_PT = "mlruns/artifacts/*/*/artifacts/checkpoints/last.pt"


# -- signals and dead processes -------------------------------------------------------------------------------
def test_sigterm_during_train_ends_the_run_killed_with_its_checkpoints(workdir):
    proc = start(workdir, "train", "--model", "mlp", "--dataset", "digits", "--epochs", "300", "--quiet",
                 "--patience", "0")
    wait_for(str(workdir / LAST_PT), proc)  # written after epoch 1, whatever resume_every_s says
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = one_line(err, "Aborted: ")
    (run,) = store_runs(workdir)
    assert line.startswith("Aborted: terminated (SIGTERM)") and f"--resume {run.info.run_id}" in line
    assert err.splitlines()[0] == f"run {run.info.run_id} started"  # printed when the run started
    assert run.info.status == "KILLED" and run.data.tags["trainforge.error"] == "terminated (SIGTERM)"
    assert {"checkpoints/best.pt", "checkpoints/last.pt"} <= artifacts(workdir, run.info.run_id)
    assert run.data.tags["trainforge.host"] and run.data.tags["trainforge.pid"] == str(proc.pid)


def test_kill_9_then_runs_stale_mark_killed_and_resume(workdir):
    proc = start(workdir, "train", "--model", "mlp", "--dataset", "iris", "--epochs", "400", "--quiet",
                 "--patience", "0", "--no-export")
    wait_for(str(workdir / LAST_PT), proc)
    proc.kill()
    proc.communicate()
    (run,) = store_runs(workdir)
    run_id = run.info.run_id
    assert run.info.status == "RUNNING"
    listed = tf(workdir, "runs", "--stale", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(r["run_id"], r["state"], r["resumable"]) for r in json.loads(listed.stdout)] == [(run_id, "dead", True)]
    marked = tf(workdir, "runs", "--stale", "--mark-killed")
    assert marked.returncode == 0 and f"trainforge train --resume {run_id}" in marked.stdout, marked
    assert store_runs(workdir)[0].info.status == "KILLED"
    assert "checkpoints/last.pt" in artifacts(workdir, run_id)  # kept
    assert tf(workdir, "runs", "--stale").stdout.strip() == "no stale runs"
    resumed = tf(workdir, "train", "--resume", run_id, "--quiet", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert store_runs(workdir)[0].info.status == "FINISHED"


def test_a_live_run_is_not_stale(workdir):
    proc = start(workdir, "train", "--model", "mlp", "--dataset", "digits", "--epochs", "300", "--quiet",
                 "--patience", "0", "--no-export")
    try:
        wait_for(str(workdir / LAST_PT), proc)
        proc.send_signal(signal.SIGSTOP)  # hold it while we look
        listed = json.loads(tf(workdir, "runs", "--json").stdout)
        assert [r["state"] for r in listed] == ["alive"]
        assert json.loads(tf(workdir, "runs", "--stale", "--mark-killed", "--json").stdout) == []
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert proc.returncode == 143


TUNE = ["tune", "--model", "mlp", "--dataset", "digits", "--epochs", "300", "--n-trials", "4", "--pruner", "none",
        "--no-export", "--quiet", "-p", "trainer.patience=0", "--study", "s"]


def _tune_state(workdir: Path) -> dict[str, str]:
    return {r.info.run_name: r.info.status for r in store_runs(workdir)}


def test_sigterm_to_tune_behaves_like_ctrl_c(workdir):
    proc = start(workdir, *TUNE)
    wait_for(str(workdir / "tmp" / "trainforge-*" / "checkpoints" / "best.pt"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM): finished trials are kept" in err
    assert _tune_state(workdir) == {"s": "KILLED", "s-trial-0": "KILLED"}


@pytest.mark.parametrize("target", ["parent", "worker", "group-sigint"])
def test_tune_n_jobs_2_signals(workdir, target):
    """SIGTERM to the parent (forwarded) or to one worker, and Ctrl-C to the whole group: every running
    trial ends KILLED, the parent run KILLED, exit 143 (130 for Ctrl-C), and no traceback anywhere."""
    import psutil

    proc = start(workdir, *TUNE[:-2], "--n-jobs", "2", "--study", "s")
    wait_for(str(workdir / "tmp" / "trainforge-*" / "checkpoints" / "best.pt"), proc, timeout=240)
    workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 2
    if target == "parent":
        proc.send_signal(signal.SIGTERM)
    elif target == "worker":
        workers[0].send_signal(signal.SIGTERM)
    else:  # what the terminal does on Ctrl-C: SIGINT to every process of the foreground group
        for p in (psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)):
            p.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == (130 if target == "group-sigint" else 143), err
    states = _tune_state(workdir)
    assert states.pop("s") == "KILLED"
    assert "KILLED" in states.values() and "RUNNING" not in states.values(), states


# -- bad inputs: one line, nothing half-done ----------------------------------------------------------------
def _iris_model(workdir: Path) -> dict:
    done = tf(workdir, "train", "--model", "mlp", "--dataset", "iris", "--epochs", "3", "--quiet", "--json")
    assert done.returncode == 0, done.stderr
    return last_json(done.stdout)


def _damage(workdir: Path, name: str) -> None:
    for path in (workdir / "mlruns").rglob(name):
        path.write_bytes(path.read_bytes()[:300])


def _evil_pickle(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Evil())


def _setup_legacy_pickle(workdir: Path) -> list[str]:
    done = tf(workdir, "train", "--model", "random-forest", "--dataset", "iris", "--quiet", "--json")
    run_id = last_json(done.stdout)["run_id"]
    for path in (workdir / "mlruns").rglob("estimator.skops"):  # a run written before skops, made hostile
        path.unlink()
        (path.parent / "estimator.pkl").write_bytes(_evil_pickle(workdir / "PWNED"))
    return ["export", run_id, "-o", "out.onnx"]


def _setup_untrusted_skops(workdir: Path) -> list[str]:
    import skops.io
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import FunctionTransformer

    done = tf(workdir, "train", "--model", "random-forest", "--dataset", "iris", "--quiet", "--json")
    run_id = last_json(done.stdout)["run_id"]
    hostile = FunctionTransformer(func=os.system)  # a callable skops does not trust by default
    for path in (workdir / "mlruns").rglob("estimator.skops"):
        skops.io.dump({"model": RandomForestClassifier(), "f": hostile}, path)
    return ["export", run_id, "-o", "out.onnx"]


def _setup_nan_late(workdir: Path) -> list[str]:
    import numpy as np
    import pandas as pd

    model = _iris_model(workdir)["onnx_path"]
    x = np.random.default_rng(0).normal(size=(60_000, 4)).astype("float32")
    x[50_001, 2] = np.nan  # row 50,002 of the data, after the first chunk was written
    pd.DataFrame(x, columns=FEATURES).to_csv(workdir / "in.csv", index=False)
    return ["predict", model, "-i", "in.csv", "-o", "out.csv"]


def _setup_header_only(workdir: Path) -> list[str]:
    model = _iris_model(workdir)["onnx_path"]
    (workdir / "in.csv").write_text(",".join(FEATURES) + "\n")
    return ["predict", model, "-i", "in.csv", "-o", "out.csv"]


def _setup_damaged_best(workdir: Path) -> list[str]:
    run_id = _iris_model(workdir)["run_id"]
    _damage(workdir, "best.pt")
    return ["export", run_id, "-o", "out.onnx"]


def _setup_damaged_last(workdir: Path) -> list[str]:
    proc = start(workdir, "train", "--model", "mlp", "--dataset", "iris", "--epochs", "400", "--quiet",
                 "--patience", "0", "--no-export")
    wait_for(str(workdir / LAST_PT), proc)
    proc.kill()
    proc.communicate()
    _damage(workdir, "last.pt")
    return ["train", "--resume", store_runs(workdir)[0].info.run_id, "--quiet"]


def _setup_file_as_folder(workdir: Path) -> list[str]:
    (workdir / "a-file.txt").write_text("not a folder")
    return ["train", *IRIS, "--tracking-uri", "sqlite:///a-file.txt/mlflow.db"]


def _args(*args: str):
    return lambda workdir: list(args)


#: id -> (set-up returning the command, exit code, text in the one line, store check, existing output file)
ROWS = {
    "p-seed-abc": (_args("train", *IRIS, "-p", "trainer.seed=abc"), 1, "trainer.seed must be an integer", "no-run", None),
    "p-val-fraction-abc": (_args("train", *IRIS, "-p", "trainer.val_fraction=abc"), 1,
                           "trainer.val_fraction must be a number", "no-run", None),
    "p-patience-abc": (_args("train", *IRIS, "-p", "trainer.patience=abc"), 1, "trainer.patience must be an integer",
                       "no-run", None),
    "sqlite-under-a-file": (_setup_file_as_folder, 1, "cannot use the MLflow tracking store", "no-run", None),
    "unreachable-server": (_args("train", *IRIS, "--tracking-uri", "http://127.0.0.1:9"), 1,
                           "cannot use the MLflow tracking store 'http://127.0.0.1:9'", "no-run", None),
    "damaged-best-pt-export": (_setup_damaged_best, 1, "best.pt: not a readable trainforge checkpoint", "unchanged",
                               "out.onnx"),
    "damaged-last-pt-resume": (_setup_damaged_last, 1, "last.pt: not a readable trainforge checkpoint", "unchanged",
                               None),
    "legacy-pickle-export": (_setup_legacy_pickle, 1, "no longer loads (a pickle can run code", "unchanged",
                             "out.onnx"),
    "untrusted-skops-export": (_setup_untrusted_skops, 1, "types trainforge does not trust", "unchanged", "out.onnx"),
    "predict-nan-row-50002": (_setup_nan_late, 1, "in.csv: row 50003, column 3: NaN", "unchanged", "out.csv"),
    "predict-header-only": (_setup_header_only, 1, "in.csv: no rows", "unchanged", "out.csv"),
    "data-bad-param": (_args("data", "--dataset", "iris", "-p", "trainer.val_fraction=abc", "-o", "out.csv"), 1,
                       "trainer.val_fraction must be a number", "no-run", "out.csv"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_fault_row(workdir, row):
    setup, code, text, store_check, existing = ROWS[row]
    args = setup(workdir)
    before = {(r.info.run_id, r.info.status) for r in store_runs(workdir)}
    if existing:
        (workdir / existing).write_text("GOOD\n")
    started = time.monotonic()
    done = tf(workdir, *args)
    seconds = time.monotonic() - started
    assert done.returncode == code, done.stderr
    line = one_line(done.stderr)
    assert text in line, line
    assert "weights_only" not in line
    if store_check == "no-run":  # the error came before a run was opened
        assert not store_runs(workdir)
    else:
        assert {(r.info.run_id, r.info.status) for r in store_runs(workdir)} == before
    if existing:
        assert (workdir / existing).read_text() == "GOOD\n"  # an existing output is left as it was
    no_partial_files(workdir)
    assert not (workdir / "PWNED").exists()  # no code from the store ran
    if row == "unreachable-server":
        assert seconds < 25, seconds


def test_outputs_are_written_whole(workdir):
    model = _iris_model(workdir)["onnx_path"]
    assert tf(workdir, "data", "--dataset", "iris", "-o", "rows.csv").returncode == 0
    (workdir / "pred.csv").write_text("OLD\n")
    done = tf(workdir, "predict", model, "-i", "rows.csv", "-o", "pred.csv", "--target", "target")
    assert done.returncode == 0, done.stderr
    assert len((workdir / "pred.csv").read_text().splitlines()) == 31  # header + the 30 test rows
    run_id = _iris_model(workdir)["run_id"]
    assert tf(workdir, "export", run_id, "-o", "m.onnx").returncode == 0 and (workdir / "m.onnx").stat().st_size
    no_partial_files(workdir)


# -- plugins that break -------------------------------------------------------------------------------------
PLUGIN_PACKAGES = {
    "tf-broken-import": ("tf_broken_import", "import not_a_module_anywhere\n"),
    "tf-empty": ("tf_empty", "def register_models(register):  # no @trainforge.hookimpl\n    pass\n"),
    "tf-unknown-hook": ("tf_unknown_hook", "import trainforge\n\n\n@trainforge.hookimpl\n"
                                          "def register_modles(register):\n    pass\n"),
    "tf-dup": ("tf_dup", "import torch\nimport trainforge\n\n\n@trainforge.hookimpl\ndef register_models(register):\n"
                         "    register(trainforge.ModelSpec(name='cnn', tasks={'classification'},\n"
                         "        build=lambda input_shape, output_dim: torch.nn.Linear(input_shape[0], output_dim)))\n"),
    "tf-one-out": ("tf_one_out", "import math\nimport torch\nimport trainforge\n\n\n@trainforge.hookimpl\n"
                                 "def register_models(register):\n"
                                 "    register(trainforge.ModelSpec(name='one-out', tasks={'classification'}, input='vector',\n"
                                 "        build=lambda input_shape, output_dim: torch.nn.Linear(math.prod(input_shape), 1)))\n"),
}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The packages above built and installed with pip into a --target folder (not the shared venv)."""
    root = tmp_path_factory.mktemp("plugins")
    for dist, (module, code) in PLUGIN_PACKAGES.items():
        (root / "src" / dist / module).mkdir(parents=True)
        (root / "src" / dist / module / "__init__.py").write_text(code)
        (root / "src" / dist / "pyproject.toml").write_text(textwrap.dedent(f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "{dist}"
            version = "0.1"
            [project.entry-points.trainforge]
            {module[3:]} = "{module}"
            [tool.setuptools]
            packages = ["{module}"]
            """))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(root / "site"), *(str(root / "src" / d) for d in PLUGIN_PACKAGES)],
                   check=True, capture_output=True, timeout=300)
    return str(root / "site")


def _warnings(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("WARNING")]


def test_broken_plugins_do_not_take_down_other_commands(workdir, plugin_site):
    env = {"PYTHONPATH": plugin_site}
    listed = tf(workdir, "plugins", **env)
    assert listed.returncode == 0, listed.stderr
    warned = _warnings(listed.stderr)
    assert len(warned) == 3 and all("TRAINFORGE_BLOCK_PLUGINS=tf-" in w for w in warned), warned
    problems = {r["name"]: r for r in json.loads(tf(workdir, "plugins", "--json", **env).stdout)
                if r["kind"] == "problem"}
    assert {k: v["status"] for k, v in problems.items()} == {
        "broken_import": "broken", "empty": "empty", "unknown_hook": "broken", "dup": "conflict"}
    assert "not_a_module_anywhere" in problems["broken_import"]["description"]
    assert "register_modles" in problems["unknown_hook"]["description"]
    assert "registers no hook" in problems["empty"]["description"]
    assert "BROKEN" in listed.stdout and "WARNING (registers nothing)" in listed.stdout

    ok = tf(workdir, "train", *IRIS, "--no-export", **env)  # another plugin's model still trains
    assert ok.returncode == 0 and len(_warnings(ok.stderr)) == 3, ok.stderr
    dup = tf(workdir, "train", "--model", "cnn", "--dataset", "digits", "--epochs", "1", "--quiet", **env)
    line = [x for x in dup.stderr.splitlines() if x.startswith("Error: ")]
    assert dup.returncode == 1 and len(line) == 1 and "'cnn' is registered twice" in line[0], dup.stderr
    assert "TRAINFORGE_BLOCK_PLUGINS=tf-dup" in line[0]

    blocked = tf(workdir, "plugins", "--json", **env,
                 TRAINFORGE_BLOCK_PLUGINS="tf-broken-import,tf_dup,TF.Unknown-Hook")  # distribution names
    assert blocked.returncode == 0 and not _warnings(blocked.stderr), blocked.stderr
    assert [r["name"] for r in json.loads(blocked.stdout) if r["kind"] == "problem"] == ["empty"]
    assert tf(workdir, "train", "--model", "cnn", "--dataset", "digits", "--epochs", "1", "--quiet", "--no-export",
              **env, TRAINFORGE_BLOCK_PLUGINS="tf-dup").returncode == 0


def test_model_output_shape_is_checked_before_a_run_opens(workdir, plugin_site):
    done = tf(workdir, "train", "--model", "one-out", "--dataset", "breast-cancer", "--epochs", "2", "--quiet",
              PYTHONPATH=plugin_site, TRAINFORGE_LOAD_PLUGINS="tf-one-out")
    assert done.returncode == 1
    assert one_line(done.stderr) == ("Error: model 'one-out' returned (N, 1) for classification with 2 classes; "
                                     "expected (N, 2)")
    assert not store_runs(workdir)
