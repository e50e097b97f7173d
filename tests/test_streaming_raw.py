"""Streamed raw tables: a CSV or Parquet file with missing cells, a category and free text streams
(``dataset.streaming=true``), gets its statistics in one pass, and exports the same raw-row ONNX graph."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pandas as pd
from conftest import last_json, mlflow_client
from test_rawtables import _torch_labels

from trainforge.training.streaming_tabular import LevelCounter, Sample

WORDS = {"yes": ["bright clear signal", "strong steady pulse"], "no": ["faint noisy trace", "weak broken pulse"]}


def stream_frame(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Two numbers (3 % missing, a few 'n/a'), a 4-level ``site`` (missing, one rare level), a free-text
    ``note`` (some empty) and a yes/no label set by ``a``, ``site`` and the note's words."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    site = rng.choice(["north", "south", "east"], rows).astype(object)
    site[rng.random(rows) < 0.003] = "rare-outpost"
    score = a + np.where(site == "north", 1.0, np.where(site == "south", -1.0, 0.0)) + rng.normal(0, 0.3, rows)
    label = np.where(score > 0, "yes", "no")
    note = [f"{rng.choice(WORDS[y])} at {rng.choice(['dawn', 'dusk'])}" for y in label]
    frame = pd.DataFrame({"a": a, "b": b, "site": site, "note": note, "label": label})
    frame.loc[rng.random(rows) < 0.03, "a"] = np.nan
    frame.loc[rng.random(rows) < 0.03, "b"] = np.nan
    frame.loc[rng.random(rows) < 0.03, "site"] = None
    frame.loc[rng.random(rows) < 0.05, "note"] = ""
    return frame


def _train(cli, path: str) -> dict:
    return last_json(cli("train", "--model", "mlp", "--dataset", path.rsplit(".", 1)[1], "-p", f"dataset.path={path}",
                         "-p", "dataset.target=label", "-p", "dataset.streaming=true", "--epochs", "2",
                         "--batch-size", "256", "--device", "cpu", "--quiet", "--json").output)


def _report(workdir, run_id: str) -> dict:
    local = mlflow_client(workdir).download_artifacts(run_id, "data_report.json", str(workdir))
    return json.loads(open(local).read())


def test_streamed_csv_with_missing_cells_trains_exports_and_predicts(cli, workdir):
    frame = stream_frame()
    frame["b"] = frame["b"].astype(object)
    frame.loc[7, "b"] = "n/a"  # a junk value in a numeric column counts as missing
    frame.to_csv(workdir / "raw.csv", index=False)
    result = _train(cli, "raw.csv")
    run = mlflow_client(workdir).get_run(result["run_id"])
    assert run.info.status == "FINISHED" and result["metrics"]["test_accuracy"] > 0.8
    assert run.data.metrics["onnx_raw_argmax_agreement"] == 1.0
    session = ort.InferenceSession(result["onnx_path"], providers=["CPUExecutionProvider"])
    assert {i.name: i.type for i in session.get_inputs()} == {
        "a": "tensor(float)", "b": "tensor(float)", "site": "tensor(string)", "note": "tensor(string)"}
    report = _report(workdir, result["run_id"])
    assert report["streamed"] and report["rows_read"] == len(frame)
    columns = {c["name"]: c for c in report["columns"]}
    # exact counts over every training row, not the sample: the levels and the missing cells
    assert set(columns["site"]["levels"]) == {"", "east", "north", "south"}
    assert columns["a"]["missing"] > 0 and columns["b"]["junk"] + columns["b"]["missing"] > 0
    rows = frame.drop(columns="label").iloc[:40].copy()
    rows.loc[rows.index[5:10], "a"] = np.nan
    rows.loc[rows.index[10:15], "note"] = ""
    rows.to_csv(workdir / "rows.csv", index=False)
    out = cli("predict", f"runs:/{result['run_id']}", "--input", "rows.csv", "--output", "pred.csv",
              "--provider", "cpu")
    assert out.exit_code == 0
    predicted = pd.read_csv(workdir / "pred.csv")["prediction"].astype(str).to_numpy()
    assert (predicted == _torch_labels(result, pd.read_csv(workdir / "rows.csv"))).all()


def test_streamed_parquet_predicts_an_unseen_category(cli, workdir, caplog):
    frame = stream_frame(seed=1)
    frame.to_parquet(workdir / "raw.parquet", index=False, row_group_size=500)
    result = _train(cli, "raw.parquet")
    assert mlflow_client(workdir).get_run(result["run_id"]).data.metrics["onnx_raw_argmax_agreement"] == 1.0
    rows = frame.drop(columns="label").iloc[:30].copy()
    rows.loc[rows.index[:10], "site"] = "atlantis"  # never seen in training: the unknown level, not an error
    rows.to_parquet(workdir / "rows.parquet", index=False)
    out = cli("predict", f"runs:/{result['run_id']}", "--input", "rows.parquet", "--output", "pred.csv",
              "--provider", "cpu")
    assert out.exit_code == 0 and "'site': 10 value(s) never seen in training" in caplog.text
    predicted = pd.read_csv(workdir / "pred.csv")["prediction"].astype(str).to_numpy()
    assert (predicted == _torch_labels(result, rows)).all()


def test_level_counts_are_bounded_and_keep_the_frequent_levels():
    rng = np.random.default_rng(0)
    frequent = np.repeat(["a", "b"], [3000, 2000])
    values = np.concatenate([frequent, np.array([f"id{i}" for i in range(5000)])])  # 5000 levels seen once
    rng.shuffle(values)
    counter = LevelCounter(capacity=50)
    for chunk in np.array_split(values.astype(object), 20):
        counter.update(chunk)
        assert len(counter.counts) <= 50
    # Misra-Gries: a level in more than 1/(capacity + 1) of the rows stays, at most `shortfall` rows short
    assert {"a", "b"} <= set(counter.counts)
    assert 3000 - counter.shortfall <= counter.counts["a"] <= 3000


def test_the_sample_is_uniform_and_independent_of_the_reading_order():
    from trainforge.training.streaming import row_uniform

    frame = pd.DataFrame({"i": np.arange(20_000)})
    keys = row_uniform(frame["i"].to_numpy(), 3)
    forward, backward = Sample(1000), Sample(1000)
    for part in np.array_split(np.arange(20_000), 7):
        forward.offer(frame.iloc[part], keys[part], part)
    for part in reversed(np.array_split(np.arange(20_000), 5)):
        backward.offer(frame.iloc[part], keys[part], part)
    a, b = forward.rows_in_file_order()["i"].to_numpy(), backward.rows_in_file_order()["i"].to_numpy()
    assert len(a) == 1000 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert abs(a.mean() - 10_000) < 600 and a.max() > 19_000  # uniform over the file (sd of the mean ~ 180)


def test_the_pass_counts_every_training_row_exactly(tmp_path, monkeypatch):
    """Missing cells and levels come from every training row, the fill values from the (here 300-row) sample."""
    from trainforge.training import streaming_tabular
    from trainforge.training.streaming import split_codes
    from trainforge.training.streaming_tabular import open_stream

    monkeypatch.setattr(streaming_tabular, "SAMPLE_ROWS", 300)
    monkeypatch.setattr(streaming_tabular, "TYPE_ROWS", 500)
    frame = stream_frame(rows=4000, seed=2)
    frame.to_parquet(tmp_path / "t.parquet", index=False, row_group_size=400)
    split = {"seed": 5, "val_fraction": 0.1, "test_fraction": 0.2}
    bundle = open_stream(tmp_path / "t.parquet", "label", None, "auto", split)
    train = frame[split_codes(np.arange(len(frame)), 5, 0.1, 0.2) == 0]
    columns = {c.name: c for c in bundle.meta.table.columns}
    assert bundle.meta.report["sample_rows"] == 300 and bundle.meta.sizes["train"] == len(train)
    assert columns["a"].missing == int(train["a"].isna().sum())
    assert columns["site"].missing == int(train["site"].isna().sum())
    assert columns["note"].missing == int((train["note"] == "").sum())
    counts = train["site"].fillna("").value_counts()
    # rare-outpost: 9 training rows, so a kept level (>= 5), though the 300-row sample holds about one of them
    assert columns["site"].levels == sorted(counts[counts >= 5].index) and "rare-outpost" in columns["site"].levels
    assert (bundle.meta.table.heldout.columns.tolist(), len(bundle.meta.table.heldout)) == (
        ["a", "b", "site", "note"], bundle.meta.sizes["test"])  # fewer test rows than HELDOUT_ROWS: all of them
    x, y = next(iter(bundle.train.iter_batches(512)))
    assert x.shape == (512, len(bundle.meta.feature_names)) and np.isfinite(x.numpy()).all()
