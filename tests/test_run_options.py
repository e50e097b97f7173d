"""``RunOptions``: the one settings object of ``trainforge train`` and ``trainforge.train`` (issue 22), and the
optimizer values refused before any MLflow run opens (issue 26)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import error_line, mlflow_client

import trainforge
from trainforge.errors import ConfigError
from trainforge.run.options import RunOptions

IRIS = ("--model", "mlp", "--dataset", "iris", "--epochs", "2", "--quiet", "--no-export", "--device", "cpu")


def _runs(workdir) -> list:
    if not (workdir / "mlruns" / "mlflow.db").exists():
        return []
    client = mlflow_client(workdir)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_partial_config_trains(workdir):
    """Before: ``KeyError: 'device'`` (a dict with a ``trainer`` section skipped config resolution)."""
    result = trainforge.train({"model": {"name": "mlp"}, "dataset": {"name": "iris"}, "trainer": {"epochs": 2}},
                              export=False, quiet=True)
    assert result.epochs_run == 2 and 0.0 <= result.metrics["test_accuracy"] <= 1.0
    assert result.config["trainer"]["device"] == "auto" and result.config["optimizer"]["name"] == "adam"
    params = mlflow_client(workdir).get_run(result.run_id).data.params
    assert params["trainer.epochs"] == "2" and params["trainer.batch_size"] == "64"


def test_every_train_option_is_a_run_options_field():
    """A new ``train`` option is written twice: its click option and its field (no mapping in between)."""
    from trainforge.cli.main import train

    fields = {f.name: f for f in dataclasses.fields(RunOptions)}
    names = [p.name for p in train.params]
    assert len(names) >= 20
    missing = [n for n in names if n not in fields]
    assert not missing, f"train options without a RunOptions field: {missing}"
    for name, f in fields.items():  # each config-key field names a key the resolved tree has
        if "config" in f.metadata:
            section, key = f.metadata["config"].split(".")
            assert key in RunOptions.resolve(dataset="iris").config[section], name


def test_resolve_precedence_and_unknown_options():
    opts = RunOptions.resolve(config={"trainer": {"epochs": 7, "seed": 3}}, overrides=("trainer.epochs=5",),
                              epochs=4, lr=0.02, dataset="iris", trainer__eval_batch_size=128)
    trainer = opts.config["trainer"]
    assert (trainer["epochs"], trainer["seed"], trainer["eval_batch_size"]) == (4, 3, 128)
    assert opts.config["optimizer"]["lr"] == 0.02 and opts.config["dataset"]["name"] == "iris"
    assert RunOptions.resolve(config=opts.config).config == opts.config  # resolving a resolved tree: the same
    with pytest.raises(ConfigError, match="unknown run option 'epoch'"):
        RunOptions.resolve(epoch=3)


@pytest.mark.parametrize("param, expected", [
    ("optimizer.lr=.nan", "optimizer.lr must be a finite number, got nan"),
    ("optimizer.lr=-0.1", "optimizer.lr (learning rate) must be positive, got -0.1"),
    ("optimizer.eps=.inf", "optimizer.eps must be a finite number, got inf"),
    ("optimizer.weight_decay=-1.0", "Invalid weight_decay value: -1.0"),  # torch's own check, before the run
])
def test_bad_optimizer_values_are_refused_before_any_run(cli, workdir, param, expected):
    """Before: the run opened and ended FAILED (``-0.1``), or trained into NaN weights (``.nan``)."""
    line = error_line(cli("train", *IRIS, "-p", param, ok=False))
    assert expected in line, line
    assert _runs(workdir) == []
