"""Streamed tables: stable hash splits, exact sharding over DataLoader workers, training end to end."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainforge.contracts import Callback
from trainforge.errors import DataError
from trainforge.training.data import batches
from trainforge.training.streaming import StreamingSplit, open_table, split_codes

SPLIT = {"seed": 3, "val_fraction": 0.1, "test_fraction": 0.2}


def write_table(path, n=5000, row_group=700):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    label = np.where(x[:, 0] + x[:, 1] > 0, "pos", "neg")
    table = pa.table({"row": np.arange(n, dtype=np.float64), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                      "label": label})
    pq.write_table(table, path, row_group_size=row_group)
    return table


def rows_of(split, **kw):
    return np.concatenate([x[:, 0].numpy() for x, _ in batches(split, 128, **kw)]).astype(np.int64)


def test_hash_split_is_stable_and_proportional():
    idx = np.arange(200_000)
    a, b = split_codes(idx, 7, 0.1, 0.2), split_codes(idx, 7, 0.1, 0.2)
    assert np.array_equal(a, b)
    assert abs((a == 2).mean() - 0.2) < 0.01 and abs((a == 1).mean() - 0.1) < 0.01
    assert not np.array_equal(a, split_codes(idx, 8, 0.1, 0.2))  # the seed matters


def test_splits_partition_rows_and_shuffle_keeps_every_row(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(path)
    bundle = open_table(path, "label", ["row", "a", "b", "c"], "auto", SPLIT)
    assert bundle.meta.task == "classification" and bundle.meta.class_names == ["neg", "pos"]
    seen = {name: rows_of(getattr(bundle, name)) for name in ("train", "val", "test")}
    assert sum(len(v) for v in seen.values()) == 5000
    assert len(np.unique(np.concatenate(list(seen.values())))) == 5000  # no row twice, none skipped
    assert {k: len(v) for k, v in seen.items()} == bundle.meta.sizes
    shuffled = rows_of(bundle.train, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert sorted(shuffled.tolist()) == sorted(seen["train"].tolist())
    assert not np.array_equal(shuffled, seen["train"])  # order changed
    # statistics come from the training rows only, in one streaming pass
    train_rows = pq.read_table(path).to_pandas().iloc[np.sort(seen["train"])]
    assert np.allclose(bundle.meta.mean, train_rows[["row", "a", "b", "c"]].mean().to_numpy(), rtol=1e-5)


def test_dataloader_workers_read_disjoint_shards(tmp_path):
    path = tmp_path / "t.parquet"
    write_table(path)
    bundle = open_table(path, "label", ["row", "a", "b", "c"], "auto", SPLIT)
    split: StreamingSplit = bundle.train
    loader = torch.utils.data.DataLoader(split, batch_size=None, num_workers=2)
    rows = np.concatenate([x[:, 0].numpy() for x, _ in loader]).astype(np.int64)
    assert len(rows) == len(np.unique(rows)) == bundle.meta.sizes["train"]


def test_missing_column_and_nan_are_clear_errors(tmp_path):
    path = tmp_path / "t.parquet"
    table = write_table(path, n=300, row_group=100)
    with pytest.raises(DataError, match="no target column 'nope'"):
        open_table(path, "nope", None, "auto", SPLIT)
    a = table.column("a").to_numpy().copy()
    a[250] = np.nan
    pq.write_table(table.set_column(1, "a", pa.array(a)), path, row_group_size=100)
    bundle = open_table(path, "label", ["a", "b"], "auto", SPLIT)
    with pytest.raises(DataError, match=r"row 251, column 'a'"):
        for name in ("train", "val", "test"):
            list(batches(getattr(bundle, name), 64))


def test_streaming_csv_trains_through_the_cli(cli, workdir):
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    frame.to_csv(workdir / "wine.csv", index=False)
    result = cli("train", "--model", "mlp", "--dataset", "csv", "-p", "dataset.path=wine.csv",
                 "-p", "dataset.target=target", "-p", "dataset.streaming=true", "--epochs", "30",
                 "--quiet", "--json")
    from conftest import last_json

    out = last_json(result.output)
    assert out["metrics"]["test_accuracy"] > 0.8
    assert out["onnx_path"] and out["parity_max_abs_diff"]

    # The streaming path ran: the run's split sizes are the row-hash split's (the in-memory path splits
    # stratified: 124/18/36 rows here, against the hash split's 122/18/38).
    from conftest import mlflow_client

    from trainforge.training import data as data_mod

    codes = split_codes(np.arange(len(frame)), 0, 0.1, 0.2)
    params = mlflow_client(workdir).get_run(out["run_id"]).data.params
    sizes = {name: int(params[f"data.{name}_size"]) for name in ("train", "val", "test")}
    assert sizes == {name: int((codes == c).sum()) for name, c in (("train", 0), ("val", 1), ("test", 2))}
    # and the rows the run's streamed training split yields are exactly the hash split's training rows
    cfg = out["config"]
    bundle = data_mod.load(cfg["dataset"], cfg["trainer"])
    assert isinstance(bundle.train, StreamingSplit)
    streamed = np.concatenate([x.numpy() for x, _ in batches(bundle.train, 64)])
    expected = frame.drop(columns="target").to_numpy(np.float32)[codes == 0]
    assert sorted(map(tuple, streamed)) == sorted(map(tuple, expected))


def write_wide(path, n, features=8, row_group=20_000, regression=False):
    """``n`` rows of ``features`` float32 columns and a label (two classes, or a float target)."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=features)
    with pq.ParquetWriter(path, pa.schema([*(pa.field(f"f{i}", pa.float32()) for i in range(features)),
                                           pa.field("label", pa.float64() if regression else pa.string())])) as out:
        for start in range(0, n, row_group):
            x = rng.normal(size=(min(row_group, n - start), features)).astype(np.float32)
            score = x @ w + rng.normal(scale=0.5, size=len(x))
            label = score if regression else np.where(score > 0, "yes", "no")
            out.write_table(pa.table({f"f{i}": x[:, i] for i in range(features)} | {"label": label}),
                            row_group_size=row_group)


class TraceAfterFit(Callback):
    """Starts tracemalloc when the fit ends: its peak is what test evaluation, plots and logging allocate."""

    def on_fit_end(self, trainer):
        import tracemalloc

        tracemalloc.start()


def test_after_training_a_streamed_run_keeps_no_test_split_and_logs_in_memory_values(workdir):
    """Test metrics and the confusion matrix of a streamed run are those of the whole test split computed in
    memory, while what runs after the last batch allocates less than the test split's features (numpy
    allocations, traced by tracemalloc): no step keeps the test rows (issue 14)."""
    import tracemalloc

    from conftest import mlflow_client
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    import trainforge
    from trainforge import plots

    n, features = 100_000, 120
    path = workdir / "wide.parquet"
    write_wide(path, n, features, row_group=2000)
    # matplotlib's first figure imports and caches a few MB: draw one first, so the trace sees what a run costs
    plots.confusion_matrix_counts(np.eye(2, dtype=np.int64), ["no", "yes"], workdir / "warm-up.png")
    plots.learning_curves([{"train_loss": 1.0, "val_loss": 1.0}], workdir / "warm-up.png", "classification")
    try:
        result = trainforge.train(model__name="mlp", dataset__name="parquet", dataset__path=str(path),
                                  dataset__target="label", dataset__streaming=True, trainer__epochs=1,
                                  trainer__test_fraction=0.5, trainer__val_fraction=0.05,  # a large test split
                                  trainer__batch_size=1024, trainer__device="cpu", quiet=True, export=False,
                                  callbacks=[TraceAfterFit()])
        peak_after_fit = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    codes = split_codes(np.arange(n), 0, 0.05, 0.5)
    frame = pq.read_table(path).to_pandas()[codes == 2]
    x = frame[[f"f{i}" for i in range(features)]].to_numpy(np.float32)
    test_x_bytes = x.nbytes  # 50k rows x 120 x 4 B: 24 MB, half the table's features
    assert peak_after_fit < test_x_bytes / 2, (peak_after_fit, test_x_bytes)  # about 5 MB: matplotlib's figures

    y = np.searchsorted(["no", "yes"], frame["label"].to_numpy())
    with torch.inference_mode():
        out = result.model.eval()(torch.from_numpy(x)).float()
    pred = out.argmax(1).numpy()
    p, r, f1, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    m = result.metrics
    assert m["test_accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert (m["test_precision"], m["test_recall"], m["test_f1"]) == pytest.approx((p, r, f1), abs=1e-12)
    loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y)).item()
    assert m["test_loss"] == pytest.approx(loss, rel=1e-5)
    # the logged confusion matrix is the one drawn from all test rows in memory, byte for byte
    logged = mlflow_client(workdir).download_artifacts(result.run_id, "plots/confusion_matrix.png", str(workdir))
    expected = plots.confusion_matrix(y, pred, ["no", "yes"], workdir / "expected.png")
    assert open(logged, "rb").read() == expected.read_bytes()


def test_row_sample_is_the_k_smallest_keys_in_arrival_order():
    from trainforge.tracking.runlog import RowSample

    rows = np.arange(10_000)
    sample = RowSample(300, seed=5)
    for start in range(0, len(rows), 777):  # uneven batches, several shrinks
        batch = rows[start:start + 777]
        sample.add(batch, batch * 2)
    got, doubled = sample.arrays()
    keys = np.random.default_rng(5).random(len(rows))  # the same stream of keys, drawn at once
    assert np.array_equal(got, np.sort(np.argsort(keys)[:300]))
    assert np.array_equal(doubled, got * 2) and sample.seen == len(rows)
    small = RowSample(300)
    small.add(rows[:50], rows[:50])
    assert np.array_equal(small.arrays()[0], rows[:50])  # fewer rows than k: all of them


def test_streamed_regression_plots_a_bounded_sample_and_tags_it(workdir, monkeypatch):
    from conftest import mlflow_client

    import trainforge
    from trainforge.tracking import runlog

    monkeypatch.setattr(runlog, "PLOT_ROWS", 500)  # the test split has ~1000 rows
    path = workdir / "reg.parquet"
    write_wide(path, 5000, features=3, row_group=700, regression=True)
    result = trainforge.train(model__name="mlp", dataset__name="parquet", dataset__path=str(path),
                              dataset__target="label", dataset__streaming=True, trainer__epochs=2,
                              trainer__device="cpu", quiet=True, export=False)
    run = mlflow_client(workdir).get_run(result.run_id)
    test_rows = int(run.data.params["data.test_size"])
    assert run.data.tags["trainforge.plot_rows"] == f"500 of {test_rows} test rows (uniform sample)"
    assert "plots/predicted_vs_actual.png" in [f.path for f in
                                               mlflow_client(workdir).list_artifacts(result.run_id, "plots")]
    assert result.metrics["test_r2"] > 0.5
