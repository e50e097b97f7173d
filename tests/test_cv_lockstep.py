"""Fold fits in lockstep (trainforge.cv.lockstep): the pruner sees the mean over folds after every epoch, a pruned
trial stops every fold, and the sequential fallback reports the cumulative mean per fold. Real Optuna study (in
memory), real training on wine, 3 folds, a few epochs."""

from __future__ import annotations

import optuna
import pytest

from trainforge.config import resolve
from trainforge.cv.lockstep import fit_folds
from trainforge.run.api import train
from trainforge.training.folds import load_folds


@pytest.fixture(scope="module")
def wine_folds():
    cfg = resolve({"dataset": {"name": "wine"}})
    return load_folds(cfg["dataset"], cfg["trainer"], 3)


def _cfg(lr: float, epochs: int = 4) -> dict:
    return resolve({"model": {"name": "mlp"}, "dataset": {"name": "wine"}, "optimizer": {"lr": lr},
                    "trainer": {"epochs": epochs, "patience": 0, "monitor": "val_accuracy", "device": "cpu"}})


def _objective(folds, configs, modes, **kw):
    def objective(trial):
        cfg = configs[trial.number]

        def train_fold(i, bundle, callbacks):
            return train(cfg, data=bundle, callbacks=callbacks, export=False, quiet=True,
                         run_name=f"trial{trial.number}-fold{i}")

        def report(step, mean):
            trial.report(mean, step)
            return trial.should_prune()

        results, mode = fit_folds(train_fold, folds.bundles, "val_accuracy", report, **kw)
        modes.append(mode)
        trial.set_user_attr("fold_scores", [r.history[r.best_epoch - 1]["val_accuracy"] for r in results])
        return sum(trial.user_attrs["fold_scores"]) / len(results)

    return objective


def test_lockstep_prunes_a_planted_huge_learning_rate_within_3_epochs(workdir, wine_folds):
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    modes: list[str] = []
    study.optimize(_objective(wine_folds, [_cfg(3e-3), _cfg(30.0)], modes), n_trials=2, catch=())
    good, bad = study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE and len(good.user_attrs["fold_scores"]) == 3
    assert modes == ["lockstep"] and sorted(good.intermediate_values) == [1, 2, 3, 4]  # one mean per epoch
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert max(bad.intermediate_values) <= 3  # pruned within 3 epochs of its first report
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.run_name LIKE 'trial1-fold%'")
    assert len(runs) == 3  # every fold of the pruned trial stopped (its runs ended, none still RUNNING)
    assert set(runs["status"]) <= {"FAILED", "FINISHED"}
    assert set(runs["metrics.val_accuracy"].notna()) == {True}


def test_sequential_fallback_reports_the_cumulative_mean_per_fold(workdir, wine_folds):
    study = optuna.create_study(direction="maximize")
    modes: list[str] = []
    study.optimize(_objective(wine_folds, [_cfg(3e-3, epochs=2)], modes, max_bytes=0), n_trials=1)
    trial = study.trials[0]
    assert modes == ["sequential"] and sorted(trial.intermediate_values) == [0, 1, 2]
    scores = trial.user_attrs["fold_scores"]
    assert trial.intermediate_values[1] == pytest.approx(sum(scores[:2]) / 2)
    assert trial.value == pytest.approx(trial.intermediate_values[2])


def test_lockstep_folds_train_exactly_as_sequential_runs(workdir, wine_folds):
    """Each fold keeps its own torch RNG and MLflow run across the switches: the lockstep folds' histories are
    bit for bit those of the same folds trained one after another (dropout on, so the RNG matters)."""
    import mlflow

    cfg = resolve({"model": {"name": "mlp", "dropout": 0.3}, "dataset": {"name": "wine"},
                   "trainer": {"epochs": 3, "patience": 0, "monitor": "val_accuracy", "device": "cpu"}})

    def train_fold(i, bundle, callbacks):
        return train(cfg, data=bundle, callbacks=callbacks, export=False, quiet=True, run_name=f"fold{i}")

    means: list[float] = []
    lockstep, mode = fit_folds(train_fold, wine_folds.bundles, "val_accuracy",
                               lambda step, mean: means.append(mean) or False)
    sequential = [train_fold(i, b, []) for i, b in enumerate(wine_folds.bundles)]
    assert mode == "lockstep" and len(means) == 3
    assert [r.history for r in lockstep] == [r.history for r in sequential]
    assert len({r.run_id for r in lockstep}) == 3
    for r in lockstep:  # each fold's metrics went to its own run, which ended FINISHED
        run = mlflow.get_run(r.run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["val_accuracy"] == r.history[-1]["val_accuracy"]
    assert mlflow.active_run() is None  # no fold's run left on this thread's active-run stack


def test_a_failing_fold_stops_the_others_at_the_same_epoch(workdir, wine_folds):
    """Fold 1 fails at its second epoch's end: fit_folds raises its error, and folds 0 and 2 (waiting at that
    epoch) stop there too; no fold's run is left RUNNING."""
    import mlflow

    from trainforge.contracts import Callback

    class Boom(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            if epoch == 2:
                raise RuntimeError("planted failure")

    cfg = _cfg(3e-3, epochs=6)

    def train_fold(i, bundle, callbacks):
        extra = [Boom()] if i == 1 else []
        return train(cfg, data=bundle, callbacks=[*extra, *callbacks], export=False, quiet=True, run_name=f"f{i}")

    with pytest.raises(RuntimeError, match="planted failure"):
        fit_folds(train_fold, wine_folds.bundles, "val_accuracy", lambda step, mean: False)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert sorted(runs["tags.mlflow.runName"]) == ["f0", "f1", "f2"]
    assert set(runs["status"]) == {"FAILED"}
    client = mlflow.MlflowClient()
    for run_id in runs["run_id"]:  # nobody trained a third epoch
        assert len(client.get_metric_history(run_id, "val_accuracy")) <= 2
