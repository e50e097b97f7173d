"""``tune --cv K`` (trainforge.tuning.cv_trial): a trial's value is the CV mean, its folds train in lockstep and the
pruner sees the mean over folds each epoch, the best configuration is refit on all non-test rows and exported.
Real Optuna journal storage, real MLflow store, real training on wine (2 folds, 5 epochs, 3 trials), real
onnxruntime."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from conftest import mlflow_client

from trainforge.tracking import tags as tag
from trainforge.tuning import study as study_mod
from trainforge.tuning.tune import tune

#: a small, quick space: only the learning rate is searched (the planted trial sets it far outside)
SPACE = {"mlp.n_layers": 1, "mlp.width": 32, "mlp.dropout": 0.0, "mlp.activation": "relu",
         "adam.weight_decay": 1e-5, "trainer.batch_size": 16, "adam.lr": {"low": 0.005, "high": 0.03, "log": True}}


@pytest.fixture(scope="module")
def cv_study(tmp_path_factory):
    """Two good trials, then a resume (without --cv: the study keeps it) that runs a planted lr=1e3 trial and
    exports the best configuration. The median pruner starts judging after 2 complete trials, from epoch 1."""
    root = tmp_path_factory.mktemp("tune-cv")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setitem(study_mod.PRUNERS, "median", lambda *_: optuna.pruners.MedianPruner(n_startup_trials=2,
                                                                                  n_warmup_steps=0))
    try:
        common = {"storage": str(root / "journal.log"), "study": "wine-cv", "quiet": True}
        first = tune({"search_space": SPACE}, models="mlp", dataset="wine", cv=2, epochs=5, n_trials=2,
                     pruner="median", seed=0, export=False, **common)
        optuna.load_study(study_name="wine-cv", storage=study_mod.open_storage(common["storage"])).enqueue_trial(
            {"adam.lr": 1e3})
        second = tune(n_trials=1, **common)
        study = optuna.load_study(study_name="wine-cv", storage=study_mod.open_storage(common["storage"]))
        yield first, second, study, mlflow_client(root)
    finally:
        import mlflow

        mlflow.set_tracking_uri(None)
        mp.undo()


def test_every_complete_trial_has_its_fold_scores_and_the_cv_mean(cv_study):
    first, second, study, client = cv_study
    assert first.n_complete == 2 and second.n_complete == 2 and second.n_pruned == 1
    for trial in study.trials[:2]:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        m = run.data.metrics
        folds = [m[f"fold{i}_val_accuracy"] for i in range(2)]
        assert "fold2_val_accuracy" not in m and trial.user_attrs["fold_scores"] == pytest.approx(folds)
        assert trial.value == pytest.approx(np.mean(folds)) == pytest.approx(m["cv_val_accuracy_mean"])
        assert m["cv_val_accuracy_std"] == pytest.approx(np.std(folds, ddof=1))
        assert run.data.tags[tag.CV_MODE] == "lockstep" and run.data.tags[tag.CV_FOLDS] == "2"
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5]  # one mean over the folds per epoch
        children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert sorted(r.data.tags[tag.FOLD] for r in children) == ["0", "1"]


def test_a_planted_huge_learning_rate_is_pruned_within_3_epochs_and_stops_every_fold(cv_study):
    _, _, study, client = cv_study
    bad = study.trials[2]
    assert bad.params["adam.lr"] == 1e3 and bad.state == optuna.trial.TrialState.PRUNED
    steps = sorted(bad.intermediate_values)
    assert steps[-1] - steps[0] < 3  # pruned within 3 epochs of its first report (of 5)
    run = client.get_run(bad.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags[tag.PRUNED_EPOCH] == str(steps[-1])
    folds = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(folds) == 2
    for fold in folds:  # each fold stopped with the trial, ended and marked pruned
        assert fold.info.status == "FINISHED" and fold.data.tags[tag.PRUNED_EPOCH] == str(steps[-1])
        assert len(client.get_metric_history(fold.info.run_id, "val_accuracy")) == steps[-1]


def test_the_best_config_is_refit_on_all_non_test_rows_and_exported(cv_study):
    _, second, study, client = cv_study
    best = study.trials[second.best_trial]  # the best CV mean (ties broken on the CV mean val_loss)
    assert best.value == study.best_value and second.onnx_path and second.test_metrics["test_accuracy"] > 0.5
    refits = client.search_runs([client.get_run(second.parent_run_id).info.experiment_id],
                                f"tags.`{tag.ROLE}` = 'refit' and tags.`{tag.STUDY}` = 'wine-cv'")
    assert len(refits) == 1
    refit = refits[0]
    epochs = best.user_attrs["fold_best_epochs"]
    assert refit.data.params["trainer.epochs"] == str(max(1, int(np.floor(np.median(epochs) + 0.5))))
    assert refit.data.params["trainer.patience"] == "0" and refit.data.tags[tag.REFIT_OF_TRIAL] == str(best.number)
    folds = client.search_runs([refit.info.experiment_id],
                               f"tags.mlflow.parentRunId = '{best.user_attrs['mlflow_run_id']}'")
    # 2 folds: each fold trains on the rows the other validates on, the refit on every non-test row
    assert int(refit.data.params["data.train_size"]) == sum(int(f.data.params["data.train_size"]) for f in folds)
