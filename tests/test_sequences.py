"""Sequences: the ``timeseries``/``sunspots`` datasets (windows, chronological split), the forecasting
task's metrics, ``parquet`` tables, task/model mismatches, and the done-when: ``lstm`` on the real
sunspot series beats the naive last-value forecast on test MAE."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import error_line, mlflow_client

import trainforge
from trainforge import ConfigError, DataError
from trainforge.run.api import build_config, load_data
from trainforge.training import data as data_mod

TRAINER = {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2}


def _series_file(tmp_path, n=200, suffix=".csv"):
    t = np.arange(n)
    frame = pd.DataFrame({"day": t, "value": (np.sin(t / 5.0) * 10 + t * 0.1).astype(np.float32)})
    path = tmp_path / f"series{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    return path, frame["value"].to_numpy()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_timeseries_windows_and_chronological_split(tmp_path, suffix):
    path, values = _series_file(tmp_path, suffix=suffix)
    window, horizon = 10, 3
    bundle = data_mod.load({"name": "timeseries", "path": str(path), "column": "value", "window": window,
                                   "horizon": horizon, "stride": 1}, TRAINER)
    meta, n = bundle.meta, len(values) - window - horizon + 1
    assert meta.task == "forecasting" and meta.input_shape == (window, 1) and meta.output_dim == horizon
    # chronological: train < val < test in time, contiguous, never shuffled, gap of horizon-1 windows
    first = {s: getattr(bundle, s).x[:, 0, 0].numpy() for s in ("train", "val", "test")}
    starts = {s: [int(np.flatnonzero(np.isclose(values, a))[0]) for a in v] for s, v in first.items()}
    for s in starts:
        assert starts[s] == sorted(starts[s]) and np.all(np.diff(starts[s]) == 1), s
    assert starts["val"][0] - starts["train"][-1] == horizon  # gap of horizon - 1 windows
    assert starts["test"][-1] == n - 1 and starts["train"][0] == 0
    # targets are the next `horizon` values after each window, in series units
    x, y = bundle.test.x.numpy(), bundle.test.y.numpy()
    s0 = starts["test"][0]
    np.testing.assert_allclose(x[0, :, 0], values[s0:s0 + window], rtol=1e-6)
    np.testing.assert_allclose(y[0], values[s0 + window:s0 + window + horizon], rtol=1e-6)
    assert meta.mean.shape == (1, 1)  # sequence layout: per feature over all steps


def test_shuffled_split_is_unchanged_for_unordered_data():
    iris = data_mod.load({"name": "iris"}, TRAINER)
    assert len(iris.test) == 30 and not np.all(np.diff(iris.test.x[:, 0].numpy()) >= 0)


def test_timeseries_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("value\n1\n2\nthree\n4\n")
    with pytest.raises(DataError, match=r"bad.csv: row 3 \(line 4\), column 'value': 'three' is not a number"):
        data_mod.load({"name": "timeseries", "path": str(path)}, TRAINER)
    with pytest.raises(DataError, match="no column 'nope'; columns: value"):
        data_mod.load({"name": "timeseries", "path": str(path), "column": "nope"}, TRAINER)
    good, _ = _series_file(tmp_path, n=20)
    with pytest.raises(DataError, match="at least 10 are needed"):
        data_mod.load({"name": "timeseries", "path": str(good), "window": 12}, TRAINER)


def test_forecasting_metrics_match_numpy():
    from trainforge.training.tasks import get_task

    rng = np.random.default_rng(0)
    x, y, out = rng.normal(size=(50, 6, 1)), rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    task = get_task("forecasting")
    state = task.new_state(3, torch.device("cpu"))
    for i in range(0, 50, 16):  # batched accumulation
        sl = slice(i, i + 16)
        task.update(state, torch.tensor(out[sl]), torch.tensor(y[sl]), inputs=torch.tensor(x[sl]))
    m = task.compute(state)
    naive = np.abs(y - x[:, -1, :]).mean()
    assert m["mae"] == pytest.approx(np.abs(out - y).mean())
    assert m["rmse"] == pytest.approx(np.sqrt(((out - y) ** 2).mean()))
    assert m["naive_mae"] == pytest.approx(naive) and m["mase"] == pytest.approx(np.abs(out - y).mean() / naive)
    assert task.onnx_outputs == ("prediction",) and task.main_metric == "mae"


def test_parquet_dataset_matches_csv(tmp_path):
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    frame.to_csv(tmp_path / "wine.csv", index=False)
    frame.to_parquet(tmp_path / "wine.parquet")
    a = data_mod.load({"name": "csv", "path": str(tmp_path / "wine.csv")}, TRAINER)
    b = data_mod.load({"name": "parquet", "path": str(tmp_path / "wine.parquet")}, TRAINER)
    assert a.meta.task == b.meta.task == "classification" and a.meta.class_names == b.meta.class_names
    np.testing.assert_array_equal(a.test.x.numpy(), b.test.x.numpy())
    frame.loc[7, "alcohol"] = None
    frame.to_parquet(tmp_path / "holes.parquet")
    holes = data_mod.load({"name": "parquet", "path": str(tmp_path / "holes.parquet")}, TRAINER)
    assert holes.meta.table is not None  # a raw table: the empty cell is imputed on the training split
    frame.loc[7, "target"] = None
    frame.to_parquet(tmp_path / "holes.parquet")
    with pytest.raises(DataError, match=r"holes.parquet: row 8, column 'target': the target is empty"):
        data_mod.load({"name": "parquet", "path": str(tmp_path / "holes.parquet")}, TRAINER)


def test_incompatible_choices_fail_before_training_naming_the_compatible_ones(cli, workdir):
    with pytest.raises(ConfigError) as info:
        load_data(build_config(model__name="cnn", dataset__name="sunspots"))
    message = str(info.value)
    assert "share no task" in message and "models for this dataset: gru, lstm, mlp, rnn" in message
    line = error_line(cli("train", "--model", "autoencoder", "--dataset", "sunspots", ok=False))
    assert "datasets for this model:" in line and "digits" in line
    if (workdir / "mlruns").exists():  # the store may exist, but no run was opened
        client = mlflow_client(workdir)
        assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_lstm_beats_the_naive_forecast_on_sunspots(workdir):
    result = trainforge.train(model__name="lstm", dataset__name="sunspots", optimizer__lr=0.01, quiet=True,
                              overrides=["trainer.epochs=40", "trainer.patience=0", "trainer.batch_size=32",
                                         "model.hidden_size=32"], export=False)
    m = result.metrics
    # the naive baseline recomputed from the test split itself: last value of each window, repeated
    test = load_data(result.config).test
    naive = np.abs(test.y.numpy() - test.x.numpy()[:, -1, :]).mean()
    assert m["test_naive_mae"] == pytest.approx(naive, rel=1e-5)
    assert m["test_mae"] < 0.75 * naive and m["test_mase"] < 0.75

