"""What a trial's MLflow child run holds (issue 27): params, per-epoch metrics, state, the best checkpoint,
its config and test metrics; no per-trial plots or resumable checkpoint unless asked for. Read back with
``MlflowClient``; one tiny iris study per case (1-2 trials, 2 epochs, no export)."""

from __future__ import annotations

import pytest
from conftest import last_json, mlflow_client

from trainforge.tracking import tags as tag

QUICK = ("tune", "--model", "mlp", "--dataset", "iris", "--epochs", "2", "--pruner", "none", "--no-export",
         "--quiet", "--json", "--seed", "0")


def _files(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= _files(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def _children(client, parent_run_id: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def test_trial_run_holds_what_a_trial_needs_and_no_plots(cli, workdir):
    out = last_json(cli(*QUICK, "--n-trials", "2", "--study", "lean").output)
    client = mlflow_client(workdir)
    children = _children(client, out["parent_run_id"])
    assert len(children) == 2
    for run in children:
        files = _files(client, run.info.run_id)
        assert {"checkpoints/best.pt", "config.yaml", "data_meta.json"} <= files, files
        assert not any(f.startswith("plots/") for f in files), files  # drawn for `train`, not per trial
        assert "checkpoints/last.pt" not in files  # a trial is re-run, not resumed
        params, tags_ = run.data.params, run.data.tags
        assert params["trainer.plots"] == "False" and params["trainer.resume_every_s"] == "-1"
        assert params["data.train_size"] and tags_[tag.TASK] == "classification"
        assert tags_[tag.named("plugin", "model")].startswith("mlp (")  # the batched plugin tags
        assert tags_[tag.TRIAL_STATE] == "COMPLETE" and "optuna.adam.lr" in params
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
        assert "test_accuracy" in run.data.metrics and "objective" in run.data.metrics


def test_trial_plots_are_an_opt_in(cli, workdir):
    out = last_json(cli(*QUICK, "--n-trials", "1", "--study", "full", "-p", "trainer.plots=true").output)
    client = mlflow_client(workdir)
    (run,) = _children(client, out["parent_run_id"])
    files = _files(client, run.info.run_id)
    assert {"plots/learning_curves.png", "plots/confusion_matrix.png"} <= files, files
    assert run.data.params["trainer.plots"] == "True"


@pytest.mark.parametrize("plots", [True, False])
def test_train_logs_plots_unless_told_not_to(workdir, plots):
    import trainforge

    result = trainforge.train({"model": {"name": "mlp"}, "dataset": {"name": "iris"},
                               "trainer": {"epochs": 1, "plots": plots}}, export=False, quiet=True)
    files = _files(mlflow_client(workdir), result.run_id)
    assert ("plots/learning_curves.png" in files) is plots, files
    assert "checkpoints/best.pt" in files
