"""``trainforge tune`` end to end: real Optuna storages (journal file, SQLite), the real MLflow SQLite store,
real worker processes. The Optuna side is read back with Optuna's own API, the MLflow side with
``MlflowClient``, never through trainforge's helpers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import error_line, last_json, mlflow_client, signalled
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

import trainforge
from trainforge import ConfigError
from trainforge.tuning.space import SearchSpace

EXE = shutil.which("trainforge", path=str(Path(sys.executable).parent)) or shutil.which("trainforge")
JOURNAL = Path("mlruns") / "optuna" / "journal.log"
QUICK = ("--model", "mlp", "--dataset", "iris", "--quiet")


def journal(root: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(root / JOURNAL)))


def study_runs(client, name: str) -> tuple[object, list]:
    """(the one parent run, the child runs) of study ``name``, deleted runs included."""
    from mlflow.entities import ViewType

    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`trainforge.study` = '{name}'", run_view_type=ViewType.ALL, max_results=500)
    parents = [r for r in runs if r.data.tags.get("trainforge.role") == "study"]
    assert len(parents) == 1, f"{len(parents)} parent runs for study {name}"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def tie_broken_best(study):
    """The best trial as documented for export: among trials tied on the value, the lower ``val_loss``
    user attr, then the earlier number (Optuna's ``best_trial`` takes the first of the tied ones)."""
    tied = [t for t in study.trials if t.state == TrialState.COMPLETE and t.value == study.best_value]
    return min(tied, key=lambda t: (t.user_attrs["val_loss"], t.number))


def artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return out


# -- the search space ---------------------------------------------------------------------------------
def test_search_space_fix_narrow_replace_and_conditional_names():
    space = SearchSpace(["cnn", "mlp"], ["adam", "sgd"], {
        "trainer.batch_size": 64,                        # fix
        "adam.lr": {"low": 0.001, "high": 0.005},        # narrow (keeps the declared log scale)
        "cnn": {"filters1": {"choices": [8, 16]}},       # replace, nested form
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_models = set()
    for _ in range(12):
        trial = study.ask()
        sections = space.sample(trial)
        model, opt = sections["model"]["name"], sections["optimizer"]["name"]
        seen_models.add(model)
        assert trial.params["model"] == model and trial.params["optimizer"] == opt
        assert sections["trainer"]["batch_size"] == 64 and "trainer.batch_size" not in trial.params
        own = {k.split(".", 1)[0] for k in trial.params if "." in k} - {"trainer"}
        assert own == {model, opt}, trial.params  # conditional: only the chosen plugins' parameters
        if opt == "adam":
            assert trial.distributions["adam.lr"] == FloatDistribution(0.001, 0.005, log=True)
            assert 0.001 <= sections["optimizer"]["lr"] <= 0.005
        if model == "cnn":
            assert trial.distributions["cnn.filters1"] == CategoricalDistribution([8, 16])
            assert sections["model"]["filters1"] in (8, 16)
        study.tell(trial, 0.5)
    assert seen_models == {"cnn", "mlp"}
    assert space.fixed == {"trainer.batch_size": 64}
    # sgd declares no weight decay: core's space adds it; every parameter is listed with its condition
    assert space.describe()["params"]["sgd.weight_decay"]["condition"] == "optimizer == sgd"


@pytest.mark.parametrize("overrides, message", [
    ({"mlp.widht": 3}, "unknown parameter(s) mlp.widht; valid: "),
    ({"adam.lr": {"low": 0.1, "high": 0.01}}, "need low <= high"),
    ({"mlp.activation": {"low": 0, "high": 1}}, "categorical parameter"),
    ({"adam.lr": {"lo": 0.1}}, "unknown key(s) lo"),
    ({"model": "cnn"}, "search_space.model"),
])
def test_search_space_rejects_bad_overrides(overrides, message):
    with pytest.raises(ConfigError) as info:
        SearchSpace(["mlp"], ["adam"], overrides)
    assert message in str(info.value)


def test_unknown_search_parameter_in_config_is_one_error_line_before_any_trial(cli, workdir):
    Path("space.yaml").write_text(yaml.safe_dump({"search_space": {"mlp.widht": {"choices": [8]}}}))
    line = error_line(cli("tune", *QUICK, "--config", "space.yaml", "--n-trials", "1", ok=False))
    assert "mlp.widht" in line and "mlp.width" in line
    assert not (workdir / JOURNAL).exists() or not optuna.get_all_study_names(journal(workdir))


@pytest.mark.parametrize("args, message", [
    (("--storage", "nosuchdb://host/x"), "cannot open Optuna storage 'nosuchdb://host/x'"),
    (("--storage", "results.txt"), "bad storage 'results.txt'"),
    (("--storage", "sqlite:///a-file/optuna.db"), "cannot open Optuna storage 'sqlite:///a-file/optuna.db'"),
    (("--study", "my study!"), "bad study name 'my study!'"),
    (("--metric", "val_r2"), "unknown metric 'val_r2'"),
])
def test_bad_storage_study_or_metric_is_one_error_line(cli, args, message):
    Path("a-file").write_text("a file where a folder should be")
    assert message in error_line(cli("tune", *QUICK, "--n-trials", "1", *args, ok=False))


# -- a study on the default journal storage: trials, parent run, best model, resume, re-export -----------
def test_tune_journal_study_parent_run_registry_and_resume(cli, workdir):
    Path("tune.yaml").write_text(yaml.safe_dump({
        "trainer": {"epochs": 4},
        "search_space": {"trainer.batch_size": 32, "adam.lr": {"low": 0.01, "high": 0.05},
                         "mlp": {"width": {"choices": [16, 24]}}},
        "tune": {"sampler": "random", "seed": 3},
    }))
    out = last_json(cli("tune", *QUICK, "--config", "tune.yaml", "--study", "iris-s", "--n-trials", "3",
                        "--json").output)
    for key in ("study", "best_value", "best_params", "parent_run_id", "onnx_path", "model_version",
                "n_complete", "n_pruned", "n_fail"):
        assert key in out
    assert (out["study"], out["n_complete"], out["model_version"]) == ("iris-s", 3, "1")

    # Optuna: the default journal storage holds the study, the parent run id and one run id per trial
    study = optuna.load_study(study_name="iris-s", storage=journal(workdir))
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    assert study.user_attrs["mlflow_parent_run_id"] == out["parent_run_id"]
    assert out["best_value"] == study.best_value
    assert out["best_params"] == {"trainer.batch_size": 32, **study.best_params}
    for t in trials:  # fixed, narrowed, replaced; one report per epoch trained
        assert "trainer.batch_size" not in t.params
        assert t.distributions["adam.lr"] == FloatDistribution(0.01, 0.05, log=True)
        assert t.distributions["mlp.width"] == CategoricalDistribution([16, 24])
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1))

    # MLflow: one parent, one child per trial carrying its params, metrics and final state
    client = mlflow_client(workdir)
    parent, children = study_runs(client, "iris-s")
    assert parent.info.run_id == out["parent_run_id"] and parent.info.status == "FINISHED"
    assert {c.info.run_id for c in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    for t in trials:
        child = client.get_run(t.user_attrs["mlflow_run_id"])
        assert child.data.tags["trainforge.trial_state"] == "COMPLETE"
        assert child.data.params["trainer.batch_size"] == "32"
        assert float(child.data.params["optimizer.lr"]) == pytest.approx(t.params["adam.lr"])
        assert child.data.params["optuna.mlp.width"] == str(t.params["mlp.width"])
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert len(history) == t.user_attrs["epochs_run"]
        assert max(m.value for m in history) == pytest.approx(t.value)
    assert parent.data.params["space.adam.lr"] == "float[0.01, 0.05] log"
    assert parent.data.params["space.trainer.batch_size"] == "fixed 32"
    assert parent.data.tags["trainforge.sampler"] == "random" and parent.data.tags["trainforge.pruner"] == "median"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.metrics["n_complete"] == 3
    # the summary figures are values at step 0 (not a dot at step "finished trials")
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "n_complete")] == [0]
    # the parent carries the same context tags as its children
    child_tags = client.get_run(trials[0].user_attrs["mlflow_run_id"]).data.tags
    for key in ("mlflow.source.name", "mlflow.user", "mlflow.source.type"):
        assert parent.data.tags.get(key) and parent.data.tags[key] == child_tags[key], key
    files = artifacts(client, parent.info.run_id)
    assert {"search_space.json", "best_params.json", "trials.csv", "onnx/model.onnx",
            "plots/optimization_history.png", "plots/parallel_coordinate.png",
            "plots/intermediate_values.png", "plots/param_importances.png"} <= files
    csv = Path(client.download_artifacts(parent.info.run_id, "trials.csv")).read_text().splitlines()
    assert len(csv) == 1 + 3
    header = csv[0].split(",")
    params = [f"params_{k}" for k in sorted(study.trials[0].params)]
    assert header[:3 + len(params)] == ["number", "state", "value", *params], header
    seconds = [float(row.split(",")[header.index("duration_s")]) for row in csv[1:]]
    assert all(0 < s < 600 for s in seconds), seconds

    # the registered version points at the parent run; the exported model scores what tune reported
    versions = client.search_model_versions("name='iris-s'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", out["parent_run_id"])]
    source = tie_broken_best(study).user_attrs["mlflow_run_id"]
    assert f"/runs/{source})" in versions[0].description and f"/runs/{out['parent_run_id']})" in versions[0].description
    assert client.get_logged_model(versions[0].source.split("/")[-1]).name == "study-best"
    cli("data", "--dataset", "iris", "--split", "test", "--output", "test.csv")
    scored = last_json(cli("predict", out["onnx_path"], "--input", "test.csv", "--target", "target",
                           "--output", "pred.csv", "--json", "--provider", "cpu").output)
    assert scored["metrics"]["accuracy"] == pytest.approx(out["test_metrics"]["test_accuracy"])
    assert out["test_metrics"]["test_accuracy"] == pytest.approx(
        client.get_run(tie_broken_best(study).user_attrs["mlflow_run_id"]).data.metrics["test_accuracy"], abs=1e-6)

    # resume: stored settings, trial numbers continue, same parent, refit on train+val, a new version
    again = last_json(cli("tune", "--study", "iris-s", "--n-trials", "2", "--refit", "--quiet", "--json").output)
    study = optuna.load_study(study_name="iris-s", storage=journal(workdir))
    assert [t.number for t in study.get_trials()] == [0, 1, 2, 3, 4]
    assert all(t.distributions["mlp.width"] == CategoricalDistribution([16, 24]) for t in study.trials)
    assert again["parent_run_id"] == out["parent_run_id"]
    assert again["n_complete"] + again["n_pruned"] == 5 and again["n_fail"] == 0  # the median pruner is on
    assert again["model_version"] == "2"
    parent, children = study_runs(client, "iris-s")
    refits = [c for c in children if c.data.tags.get("trainforge.role") == "refit"]
    assert len(children) == 6 and len(refits) == 1
    trial_run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert int(refits[0].data.params["data.train_size"]) == \
        int(trial_run.data.params["data.train_size"]) + int(trial_run.data.params["data.val_size"])
    best = tie_broken_best(study)
    assert int(refits[0].data.params["trainer.epochs"]) == best.user_attrs["best_epoch"]
    v2 = client.get_model_version("iris-s", "2")
    assert v2.tags["trainforge.source_run_id"] == refits[0].info.run_id

    # a conflicting setting on resume is refused; `export --study` re-exports the current best
    assert "was created with models=['mlp']" in error_line(
        cli("tune", "--study", "iris-s", "--model", "cnn", "--dataset", "digits", "--n-trials", "1", ok=False))
    cli("export", "--study", "iris-s", "--output", "best.onnx")
    meta = trainforge.exporting.exporter.read_metadata("best.onnx")
    assert meta["mlflow_run_id"] == best.user_attrs["mlflow_run_id"]


# -- pruned and failed trials, recorded on both sides ---------------------------------------------------
BEHAVIOUR = {4: "nan", 5: "constant"}  # trial number -> what the test model does


def build_flaky(input_shape, output_dim, width=16, behaviour="learn"):
    import math

    from torch import nn

    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(math.prod(input_shape), width), nn.ReLU(), nn.Linear(width, output_dim))

        def forward(self, x):
            out = self.net(x)
            if behaviour == "nan":
                return out * float("nan")  # the loss is NaN: training diverged
            return out * 0.0 if behaviour == "constant" else out  # constant: stuck at chance level

    return Flaky()


class FlakyPlugin:
    @trainforge.hookimpl
    def register_models(self, register):
        register(trainforge.ModelSpec(
            name="flaky", build=build_flaky, input="vector", tasks={"classification"},
            defaults={"width": 16, "behaviour": "learn"},
            search_space=lambda trial: {"width": trial.suggest_int("width", 8, 32),
                                        "behaviour": BEHAVIOUR.get(trial.number, "learn")}))


def test_pruned_and_failed_trials_in_optuna_and_mlflow(cli, workdir, fresh_plugins):
    fresh_plugins.register_plugin(FlakyPlugin(), name="flaky-test-plugin")
    Path("space.yaml").write_text(yaml.safe_dump({"search_space": {"adam.lr": 0.05, "trainer.batch_size": 32}}))
    out = last_json(cli("tune", "--model", "flaky", "--dataset", "iris", "--config", "space.yaml", "--epochs", "6",
                        "--pruner", "median", "--study", "flaky", "--n-trials", "6", "--no-export", "--quiet",
                        "--json").output)
    assert (out["n_complete"], out["n_pruned"], out["n_fail"]) == (4, 1, 1)

    study = optuna.load_study(study_name="flaky", storage=journal(workdir))
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 4 + [TrialState.FAIL, TrialState.PRUNED]  # the study went on
    failed, pruned = study.trials[4], study.trials[5]
    assert "training diverged" in failed.user_attrs["fail_reason"]
    pruned_at = max(pruned.intermediate_values)
    assert pruned_at < 6 and pruned.user_attrs["epochs_run"] == pruned_at  # stopped at once

    client = mlflow_client(workdir)
    parent, children = study_runs(client, "flaky")
    assert len(children) == 6
    run = client.get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["trainforge.trial_state"] == "FAIL"
    assert "diverged" in run.data.tags["trainforge.error"]
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["trainforge.trial_state"] == "PRUNED"
    assert run.data.tags["trainforge.pruned_epoch"] == str(pruned_at)
    assert run.info.run_name == "pruned-flaky-trial-5"  # told apart from complete runs in the runs table
    assert run.data.tags["mlflow.note.content"].startswith("Pruned")
    assert client.get_run(study.trials[0].user_attrs["mlflow_run_id"]).info.run_name == "flaky-trial-0"
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == pruned_at
    assert (parent.data.metrics["n_pruned"], parent.data.metrics["n_fail"]) == (1, 1)


# -- processes: parallel workers, Ctrl-C, timeout --------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    return {**env, "MLFLOW_LOGGING_LEVEL": "WARNING"}


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_parallel_processes_share_one_study_and_one_parent(workdir, storage):
    url = str(JOURNAL) if storage == "journal" else f"sqlite:///{workdir}/optuna.db"
    args = [EXE, "tune", *QUICK, "--epochs", "3", "--pruner", "none", "--study", "par", "--storage", url,
            "--no-export", "--json"]
    procs = [subprocess.Popen([*args, "--n-trials", "2"], cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # the same moment, fresh stores
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert len({last_json(o)["parent_run_id"] for o, _ in outputs}) == 1
    n = 4
    if storage == "journal":  # a third command resumes with two worker processes
        proc = subprocess.run([*args, "--n-trials", "2", "--n-jobs", "2"], cwd=workdir, env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        n = 6

    study = optuna.load_study(study_name="par", storage=url if storage == "sqlite" else journal(workdir))
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(n))  # no loss, no duplicate
    assert all(t.state == TrialState.COMPLETE for t in trials)
    parent, children = study_runs(mlflow_client(workdir), "par")
    assert parent.info.run_id == study.user_attrs["mlflow_parent_run_id"]
    assert sorted(c.info.run_id for c in children) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    if storage == "journal":
        resumed = [c for c in children if int(c.data.tags["trainforge.trial_number"]) >= 4]
        assert {c.data.tags["trainforge.worker"] for c in resumed} == {"0", "1"}, "each --n-jobs worker ran a trial"


def test_ctrl_c_to_the_process_group_of_n_jobs_2_fails_running_trials_and_keeps_finished_ones(workdir):
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group, the --n-jobs workers included."""
    proc = signalled([EXE, "tune", *QUICK, "--study", "intr", "--n-trials", "50", "--n-jobs", "2",
                      "-p", "trainer.epochs=40", "-p", "trainer.patience=0", "--pruner", "none", "--no-export"],
                     cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if (workdir / JOURNAL).exists() and "intr" in optuna.get_all_study_names(journal(workdir)):
            trials = optuna.load_study(study_name="intr", storage=journal(workdir)).get_trials()
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [t for t in trials if t.state == TrialState.RUNNING and len(t.intermediate_values) >= 3]
            if done and running:
                break
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("no trial finished in time")
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "resume with --study intr" in stderr

    trials = optuna.load_study(study_name="intr", storage=journal(workdir)).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert {t.number for t in done} <= {t.number for t in complete}  # finished trials are kept
    assert failed and len(complete) + len(failed) == len(trials)  # nothing left RUNNING
    assert all(t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)" for t in failed)
    client = mlflow_client(workdir)
    for t in failed:  # a trial the Ctrl-C met before its MLflow run opened has no run, and trained nothing
        run_id = t.user_attrs.get("mlflow_run_id")
        assert client.get_run(run_id).info.status == "KILLED" if run_id else not t.intermediate_values, t
    assert {t.number for t in running} <= {t.number for t in failed if t.user_attrs.get("mlflow_run_id")}
    assert all(client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FINISHED" for t in complete)
    parent, _ = study_runs(client, "intr")
    assert parent.info.status == "KILLED"


def test_timeout_is_honoured(cli):
    out = last_json(cli("tune", *QUICK, "--epochs", "2", "--n-trials", "200", "--timeout", "1", "--no-export",
                        "--json").output)
    # optimize() starts no trial once 1 s has passed (a few short trials fit in it); 200 were allowed
    assert 1 <= out["n_trials_run"] < 20


def test_a_study_of_scikit_learn_estimators_exports_and_registers_its_best(cli, workdir):
    """An estimator trial has no best.pt: its kind re-exports the fitted model into the study's run, and the
    file is scored in onnxruntime like a torch study's (was: "no checkpoints/best.pt", then an IndexError)."""
    out = last_json(cli("tune", "--model", "logistic-regression", "--dataset", "iris", "--n-trials", "2",
                        "--study", "lr", "--quiet", "--json").output)
    assert out["model_version"] == "1" and out["test_metrics"]["test_accuracy"] > 0.8, out
    cli("data", "--dataset", "iris", "--split", "test", "--output", "test.csv")
    predicted = last_json(cli("predict", out["onnx_path"], "--input", "test.csv", "--target", "target",
                              "--output", "pred.csv", "--json").output)
    assert predicted["metrics"]["accuracy"] == pytest.approx(out["test_metrics"]["test_accuracy"])
