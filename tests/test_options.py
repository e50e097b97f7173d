"""Options no other test runs, each against real components: the real trainer, MLflow store, Optuna study
and onnxruntime. Every test here fails when its option is ignored (checked by breaking each once; see the
closing notes of the session that wrote them).
"""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import last_json, mlflow_client

import trainforge

IRIS = ("--model", "mlp", "--dataset", "iris", "--quiet", "--json", "--no-export", "--device", "cpu")


def _history(workdir, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(mlflow_client(workdir).get_metric_history(run_id, key), key=lambda m: m.step)]


def test_precedence_defaults_config_params_flags(cli, workdir):
    """defaults < --config < -p < flags, read back from the run's logged params."""
    (workdir / "run.yaml").write_text(yaml.safe_dump({
        "trainer": {"epochs": 5, "batch_size": 16, "val_fraction": 0.2},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.5},
    }))
    out = last_json(cli("train", *IRIS, "--config", "run.yaml", "-p", "trainer.epochs=4",
                        "-p", "optimizer.lr=0.02", "-p", "trainer.val_fraction=0.25", "--epochs", "2",
                        "--patience", "0").output)
    params = mlflow_client(workdir).get_run(out["run_id"]).data.params
    assert params["trainer.epochs"] == "2" and out["epochs_run"] == 2  # the flag beats -p and the file
    assert params["optimizer.lr"] == "0.02"  # -p beats the file
    assert params["trainer.val_fraction"] == "0.25"
    assert params["trainer.batch_size"] == "16" and params["optimizer.name"] == "sgd"  # the file beats defaults
    assert params["optimizer.momentum"] == "0.5"
    assert params["trainer.test_fraction"] == "0.2"  # nothing set it: the documented default


def test_same_seed_same_metrics_and_another_seed_differs(cli, workdir):
    runs = [last_json(cli("train", *IRIS, "--epochs", "4", "--patience", "0", "--seed", seed).output)
            for seed in ("7", "7", "8")]
    same = [_history(workdir, r["run_id"], "val_loss") for r in runs]
    assert same[0] == same[1] and runs[0]["metrics"] == runs[1]["metrics"]
    assert same[0] != same[2]


@pytest.mark.parametrize("scheduler, params, expected", [
    ("step", ["scheduler.step_size=1", "scheduler.gamma=0.5"], lambda lr0, e: lr0 * 0.5 ** e),
    ("cosine", ["scheduler.eta_min=0.001"],
     lambda lr0, e: 0.001 + (lr0 - 0.001) * (1 + np.cos(np.pi * e / 6)) / 2),
])
def test_step_and_cosine_schedulers_change_the_logged_lr(cli, workdir, scheduler, params, expected):
    """The logged ``lr`` of epoch e (the rate that epoch trained with) follows torch's formula for e - 1 steps."""
    extra = [a for p in params for a in ("-p", p)]
    out = last_json(cli("train", *IRIS, "--epochs", "6", "--patience", "0", "--lr", "0.04",
                        "--scheduler", scheduler, *extra).output)
    lrs = _history(workdir, out["run_id"], "lr")
    assert len(lrs) == 6
    np.testing.assert_allclose(lrs, [expected(0.04, e) for e in range(6)], rtol=1e-6)


def test_plateau_scheduler_cuts_the_lr_when_the_monitored_metric_stalls(cli, workdir):
    # mode=max on val_loss: every epoch whose loss falls is "no improvement", so with patience 0 the rate is
    # halved after each such epoch (ReduceLROnPlateau); the default "none" would keep it constant.
    out = last_json(cli("train", *IRIS, "--epochs", "5", "--patience", "0", "--lr", "0.04", "--scheduler",
                        "plateau", "-p", "scheduler.patience=0", "-p", "scheduler.factor=0.5",
                        "-p", "trainer.mode=max").output)
    lrs = _history(workdir, out["run_id"], "lr")
    losses = _history(workdir, out["run_id"], "val_loss")
    assert lrs[-1] < 0.04 and lrs == sorted(lrs, reverse=True)  # it did cut the rate
    best, expected, lr = -np.inf, [], 0.04
    for loss in losses:  # the rate an epoch trained with, then the scheduler's step on its val_loss
        expected.append(lr)
        if loss > best:
            best = loss
        else:
            lr *= 0.5
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


class _Dtypes(trainforge.Callback):
    """Records the dtype of the model's outputs in training steps (what autocast produced)."""

    def on_fit_start(self, trainer):
        self.seen: set[torch.dtype] = set()
        self.handle = trainer.model.register_forward_hook(
            lambda module, args, out: self.seen.add(out.dtype) if module.training else None)

    def on_fit_end(self, trainer):
        self.handle.remove()


def test_bf16_mixed_on_cpu_runs_the_forward_pass_in_bfloat16(workdir):
    probe = _Dtypes()
    result = trainforge.train(model__name="mlp", dataset__name="iris", trainer__precision="bf16-mixed", trainer__device="cpu",
                              overrides=["trainer.epochs=3", "trainer.patience=0"], quiet=True, export=False,
                              callbacks=[probe])
    assert probe.seen == {torch.bfloat16}
    assert result.metrics["test_accuracy"] > 0.6
    assert mlflow_client(workdir).get_run(result.run_id).data.params["trainer.precision"] == "bf16-mixed"


def _tune(cli, *args: str, export: bool = False) -> tuple[dict, list]:
    out = last_json(cli("tune", "--model", "mlp", "--dataset", "iris", "--quiet", "--json", "--study", "s",
                        *([] if export else ["--no-export"]), *args).output)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend("mlruns/optuna/journal.log"))
    return out, optuna.load_study(study_name="s", storage=storage).get_trials()


def test_cmaes_sampler_is_the_one_that_samples(cli, workdir):
    # CmaEsSampler keeps its optimizer's generation in each relatively sampled trial's system attrs
    _, trials = _tune(cli, "--sampler", "cmaes", "--n-trials", "3", "--epochs", "1", "--seed", "0")
    assert any(k.startswith("cma:") for t in trials[1:] for k in t.system_attrs)


@pytest.mark.slow
def test_gp_sampler_is_the_one_that_samples(cli, workdir):
    # GPSampler shares its relative sample (after its 10 random start-up trials) through system attrs
    _, trials = _tune(cli, "--sampler", "gp", "--n-trials", "11", "--epochs", "1", "--seed", "0")
    assert not any(k.startswith("gp:") for t in trials[:10] for k in t.system_attrs)
    assert any(k.startswith("gp:relative_params") for k in trials[10].system_attrs)


@pytest.mark.parametrize("pruner", ["hyperband", "successive-halving"])
def test_hyperband_and_successive_halving_pruners_record_their_rungs(cli, workdir, pruner):
    # Both promote trials rung by rung (min resource 2 epochs, reduction factor 3): a trial that reached
    # epoch 2 has its rung-0 value stored by the pruner; the median pruner stores none.
    out, trials = _tune(cli, "--pruner", pruner, "--n-trials", "3", "--epochs", "3", "-p", "trainer.patience=0")
    assert out["n_complete"] + out["n_pruned"] == 3
    assert all("completed_rung_0" in t.system_attrs for t in trials if len(t.intermediate_values) >= 2)
    assert any("completed_rung_0" in t.system_attrs for t in trials)


def test_tune_direction_and_register(cli, workdir):
    """--direction overrides the metric's own (val_loss is minimized by default; here the largest loss is
    "best"), and --register names the registered model."""
    out, trials = _tune(cli, "--metric", "val_loss", "--direction", "maximize", "--n-trials", "3",
                        "--epochs", "2", "--pruner", "none", "--register", "iris-min", export=True)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert out["best_value"] == max(t.value for t in complete)
    assert out["best_value"] != min(t.value for t in complete)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlruns/mlflow.db")
    versions = client.search_model_versions("name = 'iris-min'")
    assert [str(v.version) for v in versions] == [out["model_version"]] == ["1"]


def test_model_and_optimizer_lists_from_the_command_line(cli, workdir):
    _, trials = _tune(cli, "--model", "cnn,mlp", "--optimizer", "adam,sgd", "--dataset", "digits", "--n-trials",
                      "6", "--epochs", "1", "--pruner", "none", "--seed", "3")
    models = {t.params["model"] for t in trials}
    optimizers = {t.params["optimizer"] for t in trials}
    assert models <= {"cnn", "mlp"} and optimizers <= {"adam", "sgd"}
    assert len(models | optimizers) >= 3  # both lists were searched, not only the defaults


def test_export_opset_is_the_one_in_the_file(digits_run, cli, workdir):
    import onnx

    cli("export", digits_run.run_id, "--tracking-uri", digits_run.tracking_uri, "--opset", "18", "-o", "o18.onnx")
    opsets = {o.domain: o.version for o in onnx.load(str(workdir / "o18.onnx")).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 18


@pytest.mark.parametrize("split", ["train", "val"])
def test_data_split_train_and_val_are_the_runs_rows(digits_run, cli, workdir, split):
    cli("data", "--run", digits_run.run_id, "--tracking-uri", digits_run.tracking_uri, "--split", split,
        "-o", f"{split}.csv")
    rows = pd.read_csv(workdir / f"{split}.csv")
    params = mlflow_client(digits_run.root).get_run(digits_run.run_id).data.params
    assert len(rows) == int(params[f"data.{split}_size"])
    cli("data", "--run", digits_run.run_id, "--tracking-uri", digits_run.tracking_uri, "--split", "test",
        "-o", "test.csv")
    test = pd.read_csv(workdir / "test.csv")
    features = [c for c in rows.columns if c != "target"]
    assert not set(map(tuple, rows[features].to_numpy())) & set(map(tuple, test[features].to_numpy()))
