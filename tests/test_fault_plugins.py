"""The fault suite, continued: what the data checks infer and state, and plugins that break (real
installed distributions, real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from faults import IRIS, one_line, store_runs, tf


def test_data_checks_say_what_they_inferred(workdir):
    """The inferred task and constant columns are said on stderr; an all-constant table and a class with a
    single row are one error line naming the label, before any store is touched."""
    import numpy as np
    import pandas as pd

    x = np.random.default_rng(0).normal(size=(200, 2))
    labels = (x[:, 0] > 0).astype(float)
    labels[7] = 0.5  # one non-integer value: the task becomes regression, which is now said
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": 1.0, "label": labels}).to_csv(workdir / "t.csv", index=False)
    done = tf(workdir, "data", "--dataset", "csv", "-p", f"dataset.path={workdir / 't.csv'}", "-o", "rows.csv")
    assert done.returncode == 0, done.stderr
    warned = done.stderr.strip().splitlines()
    assert len(warned) == 2 and "task inferred from column 'label': regression" in warned[0], warned
    assert "-p dataset.task=classification" in warned[0] and "constant on the training split" in warned[1]
    assert "1 feature column(s)" in warned[1] and warned[1].endswith(": c")
    fixed = tf(workdir, "data", "--dataset", "csv", "-p", f"dataset.path={workdir / 't.csv'}", "-p",
               "dataset.task=regression", "-o", "rows.csv")
    assert "task inferred" not in fixed.stderr
    trained = tf(workdir, "train", *IRIS[:2], "--dataset", "csv", "-p", f"dataset.path={workdir / 't.csv'}",
                 "--epochs", "1", "--quiet", "--no-export")
    assert trained.returncode == 0, trained.stderr
    (run,) = store_runs(workdir)
    assert run.data.tags["trainforge.constant_features"] == "c" and run.data.tags["trainforge.task"] == "regression"

    y = (x[:, 0] > 0).astype(int)
    y[5] = 7
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "label": y}).to_csv(workdir / "u.csv", index=False)
    once = tf(workdir, "train", *IRIS[:2], "--dataset", "csv", "-p", f"dataset.path={workdir / 'u.csv'}", "--quiet",
            "-p", "dataset.task=classification")
    assert once.returncode == 1 and "class '7' has a single row" in one_line(once.stderr)
    pd.DataFrame({"a": 1.0, "b": 2.0, "label": (x[:, 0] > 0).astype(int)}).to_csv(workdir / "v.csv", index=False)
    flat = tf(workdir, "train", *IRIS[:2], "--dataset", "csv", "-p", f"dataset.path={workdir / 'v.csv'}", "--quiet",
            "-p", "dataset.task=classification")
    assert flat.returncode == 1 and "every feature column is constant" in one_line(flat.stderr)
    assert len(store_runs(workdir)) == 1  # the errors came before a run was opened


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
    assert len(warned) == 3 and sum("TRAINFORGE_BLOCK_PLUGINS=tf-" in w for w in warned) == 2, warned
    assert any("'cnn' of tf-dup:cnn is shadowed by trainforge:cnn" in w for w in warned), warned
    rows = json.loads(tf(workdir, "plugins", "--json", **env).stdout)
    problems = {r["name"]: r for r in rows if r["kind"] == "problem"}
    assert {k: v["status"] for k, v in problems.items()} == {
        "broken_import": "broken", "empty": "empty", "unknown_hook": "broken"}
    assert {r["name"]: r["status"] for r in rows if r["kind"] == "model" and "cnn" in r["name"]} == {
        "cnn": "", "tf-dup:cnn": "shadowed"}
    assert "not_a_module_anywhere" in problems["broken_import"]["description"]
    assert "register_modles" in problems["unknown_hook"]["description"]
    assert "registers no hook" in problems["empty"]["description"]
    assert "BROKEN" in listed.stdout and "WARNING (registers nothing)" in listed.stdout

    ok = tf(workdir, "train", *IRIS, "--no-export", **env)  # another plugin's model still trains
    assert ok.returncode == 0 and len(_warnings(ok.stderr)) == 3, ok.stderr

    blocked = tf(workdir, "plugins", "--json", **env,
                 TRAINFORGE_BLOCK_PLUGINS="tf-broken-import,tf_dup,TF.Unknown-Hook")  # distribution names
    assert blocked.returncode == 0 and not _warnings(blocked.stderr), blocked.stderr
    assert [r["name"] for r in json.loads(blocked.stdout) if r["kind"] == "problem"] == ["empty"]
    unshadowed = json.loads(tf(workdir, "plugins", "--json", **env, TRAINFORGE_BLOCK_PLUGINS="tf-dup").stdout)
    assert [r["name"] for r in unshadowed if r["kind"] == "model" and "cnn" in r["name"]] == ["cnn"]


def test_model_output_shape_is_checked_before_a_run_opens(workdir, plugin_site):
    done = tf(workdir, "train", "--model", "one-out", "--dataset", "breast-cancer", "--epochs", "2", "--quiet",
              PYTHONPATH=plugin_site, TRAINFORGE_LOAD_PLUGINS="tf-one-out")
    assert done.returncode == 1
    assert one_line(done.stderr) == ("Error: model 'one-out' returned (N, 1) for classification with 2 classes; "
                                     "expected (N, 2)")
    assert not store_runs(workdir)
