"""TuneSettings: one field per ``tune`` option, choices from the registries, the precedence of resolve, the JSON
round trip; selection's rules on hand-made studies; nsga2 runs; a study with no complete trial exits 1."""

from __future__ import annotations

import dataclasses
import math

import click
import optuna
import pytest
from conftest import error_line, last_json

import trainforge
from trainforge.cli.tune import tune as tune_command
from trainforge.errors import ConfigError
from trainforge.tuning import deployment, selection, study
from trainforge.tuning.settings import DERIVED, DIRECTIONS, TuneSettings

CLI_ONLY = {"as_json"}  # printing, not a setting
QUICK = ("--model", "mlp", "--dataset", "iris", "--epochs", "1", "--quiet")


def test_every_tune_option_is_a_settings_field_and_every_choice_comes_from_its_registry():
    fields = {f.name for f in dataclasses.fields(TuneSettings) if not f.name.startswith("_")} - DERIVED
    options = {p.name for p in tune_command.params} - CLI_ONLY
    assert options == fields, (sorted(options - fields), sorted(fields - options))
    choices = {p.name: list(p.type.choices) for p in tune_command.params if isinstance(p.type, click.Choice)}
    assert choices == {"sampler": list(study.SAMPLERS), "pruner": list(study.PRUNERS),
                       "direction": list(DIRECTIONS), "provider": list(deployment.PROVIDERS)}
    assert "nsga2" in choices["sampler"]
    for name in deployment.KNOWN:  # the --objective help names every measured objective
        assert name in next(p for p in tune_command.params if p.name == "objectives").help


def test_resolve_precedence_arguments_then_section_then_stored_then_defaults():
    config = {"tune": {"sampler": "random", "n_trials": 7, "pruner": "hyperband"}, "trainer": {"epochs": 4}}
    stored = {"sampler": "gp", "pruner": "none", "models": ["mlp"], "optimizers": ["sgd"], "dataset": "iris",
              "base": {"dataset": {"name": "iris"}}}
    s = TuneSettings.resolve(config, stored=stored, sampler="tpe", n_trials=None, seed=5)
    assert (s.sampler, s.pruner, s.n_trials, s.seed) == ("tpe", "hyperband", 7, 5)  # argument, section, section
    assert (s.optimizers, s.models, s.dataset) == (["sgd"], ["mlp"], "iris")  # stored
    assert (s.n_jobs, s.heartbeat_interval, s.storage) == (1, 30, study.DEFAULT_STORAGE)  # defaults
    assert s.base["trainer"] == {"epochs": 4, "val_fraction": 0.2, "plots": False, "resume_every_s": -1}
    # a trial's run draws plots / keeps last.pt when the config asks (issue 27: off by default for trials)
    opted = TuneSettings.resolve({"trainer": {"resume_every_s": 30}}, stored={}, overrides=["trainer.plots=true"])
    assert (opted.base["trainer"]["plots"], opted.base["trainer"]["resume_every_s"]) == (True, 30)
    assert sorted(s.given) == ["n_trials", "pruner", "sampler", "seed"]
    # a frozen field that conflicts with the stored study, an unknown tune: key, an out-of-range value
    with pytest.raises(ConfigError, match="was created with optimizers=\\['sgd'\\]"):
        TuneSettings.resolve({}, stored=stored, optimizers="adam")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) in tune: trails"):
        TuneSettings.resolve({"tune": {"trails": 3}}, stored={})
    with pytest.raises(ConfigError, match="n_jobs must be a whole number >= 1, got 0"):
        TuneSettings.resolve({"tune": {"n_jobs": 0}}, stored={})
    with pytest.raises(ConfigError, match="unknown sampler 'annealing'"):
        TuneSettings.resolve({"tune": {"sampler": "annealing"}}, stored={})


def test_json_round_trip_and_stored_part():
    s = TuneSettings.resolve({"model": {"name": "mlp"}}, stored={}, models="mlp,cnn", objectives=["val_accuracy"],
                             heartbeat_grace=200, threads=2, overrides=["trainer.patience=0"])
    back = TuneSettings.from_json(s.to_json())
    assert back == s and back.models == ["mlp", "cnn"] and back.base["trainer"]["patience"] == 0
    assert set(s.stored()) == {"models", "optimizers", "dataset", "search_space", "sampler", "pruner", "metric",
                               "direction", "deployment", "base", "study", "storage", "cv"}


def test_cv_is_checked_and_frozen_with_the_study():
    with pytest.raises(ConfigError, match="cv must be a whole number of folds >= 2, got 1"):
        TuneSettings.resolve({"tune": {"cv": 1}}, stored={})
    stored = TuneSettings.resolve({}, stored={}, cv=3).stored()
    assert TuneSettings.resolve({}, stored=stored).cv == 3  # a resume keeps its folds
    with pytest.raises(ConfigError, match="created with cv=3; 5 conflicts"):
        TuneSettings.resolve({}, stored=stored, cv=5)
    plain = TuneSettings.resolve({}, stored={}).stored()
    with pytest.raises(ConfigError, match="created without --cv"):
        TuneSettings.resolve({}, stored=plain, cv=3)


def _study(directions, values, val_losses=None):
    s = optuna.create_study(directions=directions)
    for i, v in enumerate(values):
        attrs = {"val_loss": val_losses[i]} if val_losses else {}
        s.add_trial(optuna.trial.create_trial(values=v, params={}, distributions={}, user_attrs=attrs))
    return s


def test_best_trial_breaks_ties_on_validation_loss_and_skips_non_finite_values():
    s = _study(["maximize"], [[0.9], [0.95], [0.95], [math.inf]], val_losses=[0.1, 0.4, 0.2, 0.0])
    assert selection.best_trial(s).number == 2
    assert selection.best_trial(_study(["maximize"], [])) is None
    assert selection.pick(s, [], None).number == 2
    front = _study(["maximize", "minimize"], [[0.9, 1.0], [0.99, 10.0], [0.8, 5.0]])
    assert [t.number for t in selection.front(front)] == [1, 0]
    assert selection.pick(front, ["val_accuracy", "latency_ms"], "latency_ms<=2").number == 0


def test_nsga2_sampler_runs(cli):
    out = last_json(cli("tune", *QUICK, "--sampler", "nsga2", "--n-trials", "2", "--no-export", "--json").output)
    assert out["n_complete"] == 2 and out["failures"] == []


def _nan_model(input_shape, output_dim, width=8):
    from torch import nn

    class Diverges(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(math.prod(input_shape), output_dim)

        def forward(self, x):
            return self.net(x.flatten(1)) * float("nan")

    return Diverges()


class DivergingPlugin:
    @trainforge.hookimpl
    def register_models(self, register):
        register(trainforge.ModelSpec(name="diverges", build=_nan_model, input="vector", tasks={"classification"},
                                      defaults={"width": 8},
                                      search_space=lambda trial: {"width": trial.suggest_int("width", 4, 16)}))


def test_no_complete_trial_exits_1_with_the_most_common_reason_and_json_lists_each(cli, workdir, fresh_plugins):
    fresh_plugins.register_plugin(DivergingPlugin(), name="diverging-test-plugin")
    args = ("tune", "--model", "diverges", "--dataset", "iris", "--epochs", "1", "--n-trials", "2", "--quiet")
    line = error_line(cli(*args, "--study", "nan", ok=False))
    assert "no trial of study 'nan' completed: 2 failed, 2 of them with" in line
    result = cli(*args, "--study", "nan2", "--json", ok=False)
    assert result.exit_code == 1
    data = last_json(result.output)
    assert data["n_complete"] == 0 and [f["trial"] for f in data["failures"]] == [0, 1]
    reason = data["failures"][0]["reason"]
    assert reason and all(f["reason"] == reason for f in data["failures"]) and reason.splitlines()[0][:40] in line
