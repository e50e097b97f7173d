"""Qualified plugin names (``DIST:NAME``): a third-party package that registers a built-in's name is
shadowed, not fatal; two packages sharing a name make the bare name an error listing the qualified ones.

The packages are real distributions (a package plus its ``*.dist-info``) on a temporary ``sys.path``
entry, found by ``importlib.metadata`` through the ``trainforge`` entry-point group.
"""

from __future__ import annotations

import json
import logging
import sys

import pandas as pd
import pytest
from conftest import error_line, last_json, mlflow_client
from test_plugins import VERSION, write_distribution

import trainforge

TABKIT = '''
import trainforge


def build(input_shape, output_dim):
    raise RuntimeError("the package's mlp was built although the bare name belongs to the built-in")


def load(n=150):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=int(n), n_features=5, n_informative=3, random_state=0)
    return trainforge.ArrayData(features=x.astype("float32"), target=y, task="classification",
                                class_names=["no", "yes"], feature_names=[f"f{i}" for i in range(5)])


@trainforge.hookimpl
def register_models(register):
    register(trainforge.ModelSpec(name="mlp", build=build, input="vector", description="not the built-in"))


@trainforge.hookimpl
def register_datasets(register):
    register(trainforge.DatasetSpec(name="breast-cancer", load=load, tasks={"classification"},
                                    description="five generated features"))
'''


@pytest.fixture
def site(tmp_path, monkeypatch, fresh_plugins):
    """Write distributions into one ``sys.path`` folder: ``site(dist, module, source)``."""
    root = tmp_path / "site"
    modules = []

    def add(dist: str, module: str, source: str) -> None:
        write_distribution(root, source, dist=dist, module=module, ep=module)
        modules.append(module)

    monkeypatch.syspath_prepend(str(root))
    try:
        yield add
    finally:
        for module in modules:
            sys.modules.pop(module, None)
        fresh_plugins.reset()


def test_a_package_reusing_builtin_names_is_shadowed_and_reachable_qualified(site, fresh_plugins, cli, workdir,
                                                                              caplog):
    site("trainforge-tabkit", "tf_tabkit", TABKIT)
    with caplog.at_level(logging.WARNING, logger="trainforge.manager"):
        out = cli("plugins", "--json").output
    rows = {(r["kind"], r["name"]): r for r in json.loads(next(x for x in out.splitlines() if x.startswith("[")))}
    assert rows[("model", "mlp")]["distribution"] == rows[("dataset", "breast-cancer")]["distribution"] == "trainforge"
    shadowed = rows[("dataset", "trainforge-tabkit:breast-cancer")]
    assert (shadowed["status"], shadowed["shadowed_by"]) == ("shadowed", "trainforge:breast-cancer")
    assert rows[("model", "trainforge-tabkit:mlp")]["status"] == "shadowed"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned  # one per shared name, not per lookup
    assert any("'breast-cancer' of trainforge-tabkit:breast-cancer is shadowed" in w for w in warned), warned
    assert "SHADOWED by trainforge:mlp" in cli("plugins").output

    # the bare names stay on the built-ins: the Wisconsin data (30 features), the built-in mlp (the package's
    # build raises); the package's data by its qualified name, in any spelling pip accepts
    rows = cli("data", "--dataset", "breast-cancer", "--split", "train", "-o", "rows.csv").output
    assert len(pd.read_csv(workdir / "rows.csv").columns) == 31, rows  # 30 features + target
    assert fresh_plugins.get("model", "trainforge:mlp") is fresh_plugins.get("model", "mlp")
    ours = last_json(cli("train", "--model", "mlp", "--dataset", "Trainforge_TabKit:breast-cancer",
                         "--epochs", "1", "--quiet", "--no-export", "--json").output)
    run = mlflow_client(workdir).get_run(ours["run_id"])
    assert run.data.params["data.input_shape"] == "[5]" and int(run.data.params["data.train_size"]) > 50
    assert ours["config"]["dataset"]["name"] == "trainforge-tabkit:breast-cancer"
    assert run.data.tags["trainforge.plugin.model"] == f"mlp (trainforge {trainforge.__version__})"
    assert run.data.tags["trainforge.plugin.dataset"] == (
        f"trainforge-tabkit:breast-cancer (trainforge-tabkit {VERSION})")


SHARED = '''
import trainforge


@trainforge.hookimpl
def register_optimizers(register):
    register(trainforge.OptimizerSpec(name="shared-sgd", build=lambda params, lr: None, defaults={{"lr": {lr}}}))
'''


def test_two_packages_sharing_a_name_make_the_bare_name_an_error(site, fresh_plugins, cli):
    site("pkg-a", "tf_pkg_a", SHARED.format(lr=0.1))
    site("pkg-b", "tf_pkg_b", SHARED.format(lr=0.2))
    with pytest.raises(trainforge.PluginError) as info:
        fresh_plugins.get("optimizer", "shared-sgd")
    assert str(info.value) == ("optimizer 'shared-sgd' is registered by 2 packages; ask for one of "
                               "pkg-a:shared-sgd, pkg-b:shared-sgd")
    assert fresh_plugins.get("optimizer", "pkg-b:shared-sgd").defaults == {"lr": 0.2}
    assert fresh_plugins.get("optimizer", "PKG_A:shared-sgd").defaults == {"lr": 0.1}
    line = error_line(cli("train", "--optimizer", "shared-sgd", "--quiet", ok=False))
    assert "pkg-a:shared-sgd, pkg-b:shared-sgd" in line

    with pytest.raises(trainforge.PluginError) as info:
        fresh_plugins.get("optimizer", "pkg-c:shared-sgd")
    assert "unknown optimizer 'pkg-c:shared-sgd'; available: " in str(info.value)
    assert "adam, " in str(info.value) and "pkg-a:shared-sgd, pkg-b:shared-sgd" in str(info.value)
