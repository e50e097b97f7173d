"""Start-up stays light: ``--help`` and ``plugins`` import neither torch nor mlflow; every command has help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "mlflow", "onnxruntime", "onnx", "optuna", "sklearn", "pandas", "matplotlib")

PROBE = """
import json, sys
from trainforge.cli.main import cli
code = cli({args!r}, prog_name="trainforge", standalone_mode=False)
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"], ["train", "--help"]])
def test_no_heavy_imports(args, tmp_path):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"trainforge {' '.join(args)} imported {report['heavy']}"
    if args[0] == "plugins":
        assert "mlp" in proc.stdout and "digits" in proc.stdout


def test_help_importtime_has_no_torch_or_mlflow(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "trainforge.cli.main", "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "train" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "click" in imported  # the probe really recorded imports
    assert not {m for m in imported if m.split(".")[0] in ("torch", "mlflow")}


def test_every_command_has_help_with_an_example(cli):
    from trainforge.cli.main import cli as group

    assert {"train", "export", "predict", "plugins", "data", "ui"} <= set(group.commands)
    for name in group.commands:
        out = cli(name, "--help").output
        assert "Usage:" in out, name
        assert "Example" in out and f"trainforge {name}" in out, f"`trainforge {name} --help` shows no example"


def test_version(cli):
    import trainforge

    assert trainforge.__version__ in cli("--version").output


def test_public_functions_are_not_shadowed_by_submodules():
    """``trainforge.export``/``trainforge.predict`` stay the functions even after every submodule is imported
    (a submodule named like a public function would replace it on the package)."""
    code = ("import importlib, pkgutil, trainforge\n"
            "for m in pkgutil.iter_modules(trainforge.__path__):\n"
            "    importlib.import_module('trainforge.' + m.name)\n"
            "print(trainforge.export.__module__, trainforge.predict.__module__, trainforge.train.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["trainforge.exporting.exporter", "trainforge.exporting.predictor", "trainforge.run.api"]
