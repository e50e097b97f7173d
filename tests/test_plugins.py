"""Plugin discovery through a real distribution's entry points, conflicts, and the environment switches.

The third-party plugin is a real package plus a ``*.dist-info`` directory (``METADATA`` and
``entry_points.txt``) written into a temporary ``sys.path`` entry: ``importlib.metadata`` finds it exactly
as it finds an installed wheel, and pluggy loads it through the ``trainforge`` entry-point group.
"""

from __future__ import annotations

import inspect
import json
import sys

import pluggy
import pytest
from conftest import error_line, last_json, mlflow_client

import trainforge
from trainforge import hookspecs

DIST, VERSION, MODULE, EP = "trainforge-tiny-plugin", "0.4.2", "tf_tiny_plugin", "tiny"

PLUGIN_SOURCE = '''
"""A third-party trainforge plugin implementing every hook."""
import trainforge

EPOCHS = []


def build_model(input_shape, output_dim, bias=True):
    import math

    from torch import nn

    return nn.Linear(math.prod(input_shape), output_dim, bias=bias)


def build_optimizer(params, lr=0.1, momentum=0.0):
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def load_blobs(n=120):
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=int(n), centers=3, n_features=4, random_state=0)
    return trainforge.ArrayData(features=x.astype("float32"), target=y, task="classification",
                                class_names=["a", "b", "c"], feature_names=["f0", "f1", "f2", "f3"])


def build_scheduler(optimizer, epochs, factor=1.0):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: factor)


def build_callback(ctx):
    from trainforge.contracts import Callback

    class Recorder(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            EPOCHS.append(epoch)

    return Recorder()


def build_task(meta):
    from trainforge.training.tasks import Regression

    return Regression(getattr(meta, "target_std", None))


@trainforge.hookimpl
def register_models(register):
    register(trainforge.ModelSpec(name="tiny-linear", build=build_model, input="vector",
                                  tasks={"classification", "regression"}, defaults={"bias": True},
                                  description="One linear layer (test plugin)"))


@trainforge.hookimpl
def register_optimizers(register):
    register(trainforge.OptimizerSpec(name="tiny-sgd", build=build_optimizer,
                                      defaults={"lr": 0.1, "momentum": 0.0}, description="plain SGD"))


@trainforge.hookimpl
def register_datasets(register):
    register(trainforge.DatasetSpec(name="tiny-blobs", load=load_blobs, defaults={"n": 120},
                                    tasks={"classification"}, description="three Gaussian blobs"))


@trainforge.hookimpl
def register_schedulers(register):
    register(trainforge.SchedulerSpec(name="tiny-const", build=build_scheduler, defaults={"factor": 1.0}))


@trainforge.hookimpl
def register_callbacks(register):
    register(trainforge.CallbackSpec(name="tiny-recorder", build=build_callback, description="records epochs"))


@trainforge.hookimpl
def register_tasks(register):
    register(trainforge.TaskSpec(name="tiny-task", build=build_task, target="value",
                                 description="regression under another name"))
'''


def write_distribution(site, source: str = PLUGIN_SOURCE, dist: str = DIST, module: str = MODULE,
                       ep: str = EP) -> None:
    pkg = site / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {VERSION}\n")
    (info / "entry_points.txt").write_text(f"[trainforge]\n{ep} = {module}\n")


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch, fresh_plugins):
    """The tiny distribution on ``sys.path``; the registry is rebuilt before and after the test."""
    site = tmp_path / "site"
    write_distribution(site)
    monkeypatch.syspath_prepend(str(site))
    try:
        yield fresh_plugins
    finally:
        sys.modules.pop(MODULE, None)
        fresh_plugins.reset()


def _plugins(cli) -> list[dict]:
    out = cli("plugins", "--json").output
    return json.loads(next(line for line in out.splitlines() if line.startswith("[")))


def _names(cli, kind: str = "model") -> set[str]:
    return {row["name"] for row in _plugins(cli) if row["kind"] == kind}


def test_distribution_is_discovered_with_name_and_version(plugin_dist, cli):
    rows = {(r["kind"], r["name"]): r for r in _plugins(cli)}
    expected = {("model", "tiny-linear"), ("optimizer", "tiny-sgd"), ("dataset", "tiny-blobs"),
                ("scheduler", "tiny-const"), ("callback", "tiny-recorder"), ("task", "tiny-task")}
    for key in expected:
        assert key in rows, key
        assert (rows[key]["distribution"], rows[key]["version"], rows[key]["plugin"]) == (DIST, VERSION, EP)
    assert rows[("model", "tiny-linear")]["tasks"] == ["classification", "regression"]
    assert rows[("model", "tiny-linear")]["defaults"] == {"bias": True}
    # built-ins come through the same hooks and name their own distribution
    assert rows[("model", "mlp")]["distribution"] == "trainforge"
    assert rows[("model", "mlp")]["version"] == trainforge.__version__
    text = cli("plugins").output
    assert f"[{DIST} {VERSION}]" in text and "tiny-linear" in text


def test_distribution_plugins_train(plugin_dist, cli, workdir):
    out = cli("train", "--model", "tiny-linear", "--optimizer", "tiny-sgd", "--dataset", "tiny-blobs",
              "--scheduler", "tiny-const", "-p", "model.bias=false", "--epochs", "3", "--quiet", "--no-export",
              "--json").output
    recorded = sys.modules[MODULE].EPOCHS
    result = last_json(out)
    assert recorded == [1, 2, 3]  # the plugin's callback ran on every epoch
    run = mlflow_client(workdir).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    for section, name in (("model", "tiny-linear"), ("optimizer", "tiny-sgd"), ("dataset", "tiny-blobs"),
                          ("scheduler", "tiny-const")):
        assert run.data.tags[f"trainforge.plugin.{section}"] == f"{name} ({DIST} {VERSION})"
    assert run.data.params["model.bias"] == "False"
    assert run.data.params["optimizer.lr"] == "0.1"
    assert 0.0 <= result["metrics"]["test_accuracy"] <= 1.0


def test_load_plugins_allow_list(plugin_dist, cli, monkeypatch):
    monkeypatch.setenv("TRAINFORGE_LOAD_PLUGINS", "")  # empty: no third-party plugin
    plugin_dist.reset()
    assert "tiny-linear" not in _names(cli) and {"mlp", "cnn"} <= _names(cli)
    for allowed, loaded in ((EP, True), ("someone-else", False), (f"someone-else, {EP}", True), (DIST, True)):
        monkeypatch.setenv("TRAINFORGE_LOAD_PLUGINS", allowed)
        plugin_dist.reset()
        assert ("tiny-linear" in _names(cli)) is loaded, allowed
        assert "mlp" in _names(cli)  # built-ins always load


def test_block_plugins(plugin_dist, cli, workdir, monkeypatch):
    monkeypatch.setenv("TRAINFORGE_BLOCK_PLUGINS", EP)
    plugin_dist.reset()
    assert "tiny-linear" not in _names(cli)

    monkeypatch.setenv("TRAINFORGE_BLOCK_PLUGINS", "trainforge.plugins.models")
    plugin_dist.reset()
    names = _names(cli)
    assert "tiny-linear" in names and not names & {"mlp", "cnn"}
    line = error_line(cli("train", "--model", "mlp", "--dataset", "iris", "--quiet", ok=False))
    assert "unknown model 'mlp'" in line and "tiny-linear" in line


def test_same_name_twice_is_an_error_naming_both(fresh_plugins, cli):
    class Duplicate:
        @trainforge.hookimpl
        def register_models(self, register):
            register(trainforge.ModelSpec(name="mlp", build=lambda input_shape, output_dim: None))

    fresh_plugins.register_plugin(Duplicate(), name="my-duplicate")
    try:
        with pytest.raises(trainforge.PluginError) as info:
            fresh_plugins.entries()
        assert "'mlp'" in str(info.value)
        assert "trainforge.plugins.models" in str(info.value) and "my-duplicate" in str(info.value)
        line = error_line(cli("plugins", ok=False))
        assert "trainforge.plugins.models" in line and "my-duplicate" in line
    finally:
        fresh_plugins.unregister_plugin("my-duplicate")
    assert "mlp" in _names(cli)  # registry is healthy again


def test_duplicate_from_a_distribution(tmp_path, monkeypatch, fresh_plugins, cli):
    """A distribution that registers a built-in's name is shadowed: the built-in keeps the bare name, the
    package's spec is listed (and selected) by its qualified name, the rest of the package works."""
    source = PLUGIN_SOURCE.replace('name="tiny-linear"', 'name="cnn"')
    write_distribution(tmp_path / "dup-site", source, dist="dup-dist", module="tf_dup_plugin", ep="dup")
    monkeypatch.syspath_prepend(str(tmp_path / "dup-site"))
    try:
        out = cli("plugins").output
        assert "dup-dist:cnn" in out and "SHADOWED by trainforge:cnn" in out
        assert {"mlp", "cnn", "dup-dist:cnn"} <= _names(cli) and "tiny-sgd" in _names(cli, "optimizer")
        assert fresh_plugins.get("model", "cnn").input == "image"  # the built-in
        assert fresh_plugins.get("model", "dup-dist:cnn").input == "vector"
    finally:
        sys.modules.pop("tf_dup_plugin", None)


def test_misspelled_hook_is_reported(tmp_path, monkeypatch, fresh_plugins, cli):
    source = "import trainforge\n\n@trainforge.hookimpl\ndef register_modles(register):\n    pass\n"
    write_distribution(tmp_path / "bad-site", source, dist="bad-dist", module="tf_bad_plugin", ep="bad")
    monkeypatch.syspath_prepend(str(tmp_path / "bad-site"))
    try:
        rows = [r for r in _plugins(cli) if r["kind"] == "problem"]
        assert [(r["name"], r["status"], r["distribution"]) for r in rows] == [("bad", "broken", "bad-dist")]
        assert "register_modles" in rows[0]["description"]
        assert "mlp" in _names(cli)  # the other plugins still work
    finally:
        sys.modules.pop("tf_bad_plugin", None)

    class Misspelled:
        @trainforge.hookimpl
        def register_optimisers(self, register):
            pass

    monkeypatch.setenv("TRAINFORGE_LOAD_PLUGINS", "")  # the bad distribution is still on sys.path
    fresh_plugins.reset()
    with pytest.raises(trainforge.PluginError, match="register_optimisers"):
        fresh_plugins.register_plugin(Misspelled(), name="misspelled")
    assert "adam" in _names(cli, "optimizer")  # nothing half-registered is left behind


def test_wrong_spec_type_is_rejected(fresh_plugins):
    class Wrong:
        @trainforge.hookimpl
        def register_models(self, register):
            register(trainforge.DatasetSpec(name="oops", load=lambda: None))

    fresh_plugins.register_plugin(Wrong(), name="wrong")
    try:
        with pytest.raises(trainforge.PluginError, match="expected ModelSpec"):
            fresh_plugins.entries()
    finally:
        fresh_plugins.unregister_plugin("wrong")


def test_every_hook_is_documented_and_exercised_by_the_test_plugin():
    """Like datasette's meta-test: each hookspec has a docstring and the third-party plugin above uses it."""
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if getattr(fn, hookspecs.PROJECT + "_spec", None) is not None]
    assert len(specs) >= 5
    for name in specs:
        fn = getattr(hookspecs, name)
        assert (fn.__doc__ or "").strip(), f"hook {name} has no docstring"
        assert list(inspect.signature(fn).parameters) == ["register"], name
        assert f"def {name}(register)" in PLUGIN_SOURCE, f"the test plugin does not implement {name}"
    assert isinstance(trainforge.hookimpl, pluggy.HookimplMarker)
    assert trainforge.hookimpl.project_name == "trainforge"
