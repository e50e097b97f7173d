"""Raw tables: a messy CSV (missing cells, a category, free text, a constant, an identifier, string labels)
trains, exports with its preprocessing inside the ONNX graph and predicts from raw rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from conftest import last_json, mlflow_client
from sklearn.datasets import load_breast_cancer

from trainforge.data import Column, infer_columns, raw_inputs, schema_line
from trainforge.errors import DataError, ExportError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "predict_onnx.py"
WORDS = {"malignant": ["irregular firm mass", "spiculated margin noted", "hard fixed lump"],
         "benign": ["smooth round lesion", "soft mobile lump", "well defined margin"]}


def messy_frame(seed: int = 0, rows: int | None = None) -> pd.DataFrame:
    """breast_cancer with 2 % missing numeric cells, a 3-level ``site``, a free-text ``note``, a constant,
    an identifier, string labels and 5 exact duplicate rows."""
    rng = np.random.default_rng(seed)
    data = load_breast_cancer(as_frame=True)
    frame = data.data.copy()
    if rows:
        frame = frame.iloc[:rows].copy()
    labels = np.asarray(data.target_names)[data.target.to_numpy()[: len(frame)]]
    numeric = frame.to_numpy().copy()
    numeric[rng.random(numeric.shape) < 0.02] = np.nan
    frame = pd.DataFrame(numeric, columns=frame.columns)
    frame["site"] = rng.choice(["north", "south", "east"], len(frame))
    frame.loc[rng.random(len(frame)) < 0.03, "site"] = None
    frame["note"] = [f"{rng.choice(WORDS[y])} {rng.choice(['left', 'right'])} side" for y in labels]
    frame.loc[rng.random(len(frame)) < 0.05, "note"] = ""
    frame["batch"] = "B1"
    frame["record_id"] = np.arange(10_000, 10_000 + len(frame))
    frame["target"] = labels
    return pd.concat([frame, frame.iloc[:5]], ignore_index=True)


def test_column_types_are_inferred_and_declared():
    frame = messy_frame().drop_duplicates().drop(columns="target")
    columns = {c.name: c for c in infer_columns(frame)}
    assert columns["mean radius"].type == "numeric"
    assert columns["site"].type == "categorical"
    assert columns["note"].type == "text"
    assert (columns["batch"].type, columns["batch"].reason) == ("drop", "constant")
    assert (columns["record_id"].type, columns["record_id"].reason) == ("drop", "identifier")
    line = schema_line(list(columns.values()))
    assert "30 numeric" in line and "1 categorical (site)" in line and "record_id: identifier" in line
    declared = {c.name: c for c in infer_columns(frame, {"site": "drop", "note": "categorical"})}
    assert declared["site"].type == "drop" and declared["note"].type == "categorical"


def test_junk_numbers_count_as_missing_unless_most_are_junk():
    values = pd.Series([str(v / 4) for v in range(100)] + ["n/a", "?"])
    frame = pd.DataFrame({"x": values, "y": np.linspace(0, 1, 102)})
    (x, _) = columns = infer_columns(frame)
    assert x.type == "numeric"
    feeds = raw_inputs(frame, columns)
    assert np.isnan(feeds["x"][-2:, 0]).all() and not np.isnan(feeds["x"][:-2, 0]).any()
    half = pd.Series(["1", "2", "x", "y", "3", "z"] * 5)
    with pytest.raises(DataError, match="column 'h'.*not numbers"):
        infer_columns(pd.DataFrame({"h": half, "y": np.linspace(0, 1, 30)}))
    with pytest.raises(DataError, match="no column 'x'"):
        raw_inputs(frame.drop(columns="x"), columns)


def test_rows_to_predict_count_markers_and_blanks_as_missing_and_refuse_words(caplog):
    """``strict`` raw inputs: blanks and markers are missing (counted), a column of mostly words is refused."""
    column = Column("x", "numeric")
    values = [str(v) for v in range(40)] + ["", "  ", "n/a", "?", "seven"]
    with caplog.at_level("WARNING"):
        feeds = raw_inputs(pd.DataFrame({"x": values}), [column], "rows", strict=True)
    assert np.isnan(feeds["x"][40:, 0]).all() and not np.isnan(feeds["x"][:40, 0]).any()
    assert "column 'x': 3 value(s) that are not numbers (e.g. 'n/a') count as missing" in caplog.text
    with pytest.raises(DataError, match=r"column 'x': 3 of 10 value\(s\) are not numbers \(e.g. 'large'\)"):
        raw_inputs(pd.DataFrame({"x": ["1"] * 7 + ["large", " ", "big", "huge"]}), [column], "rows", strict=True)
    caplog.clear()
    with caplog.at_level("WARNING"):
        raw_inputs(pd.DataFrame({"x": [np.nan, np.nan]}), [column], "rows", strict=True)
    assert "column 'x' is empty in every row" in caplog.text


def _raw_session(path: str) -> tuple[ort.InferenceSession, dict]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    raw = session.get_modelmeta().custom_metadata_map
    return session, {k.removeprefix("trainforge."): json.loads(v) for k, v in raw.items()
                     if k in ("trainforge.columns", "trainforge.raw_parity", "trainforge.class_names")}


def test_messy_csv_trains_exports_and_predicts_raw_rows(cli, workdir):
    frame = messy_frame()
    frame.to_csv(workdir / "messy.csv", index=False)
    result = last_json(cli("train", "--model", "mlp", "--dataset", "csv", "-p", "dataset.path=messy.csv",
                           "-p", "dataset.target=target", "--epochs", "3", "--device", "cpu", "--quiet",
                           "--json").output)
    run = mlflow_client(workdir).get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["trainforge.dropped_columns"] == "batch (constant), record_id (identifier)"
    assert run.data.metrics["onnx_raw_argmax_agreement"] == 1.0
    assert run.data.metrics["onnx_raw_max_abs_diff"] <= 1e-5
    session, meta = _raw_session(result["onnx_path"])
    inputs = {i.name: i.type for i in session.get_inputs()}
    assert inputs["site"] == "tensor(string)" and inputs["mean radius"] == "tensor(float)"
    assert "record_id" not in inputs and "batch" not in inputs
    local = mlflow_client(workdir).download_artifacts(result["run_id"], "data_report.json", str(workdir))
    report = json.loads(open(local).read())
    assert (report["rows_read"], report["duplicates_dropped"]) == (len(frame), 5)
    site = next(c for c in report["columns"] if c["name"] == "site")
    assert site["type"] == "categorical" and set(site["levels"]) == {"", "east", "north", "south"}
    assert meta["columns"] == report["columns"]  # the ONNX metadata carries the same schema and statistics

    # raw rows with empty cells, an unseen site and empty text: predict == the torch-side pipeline
    rows = frame.drop(columns="target").iloc[:40].copy()
    rows.loc[rows.index[:5], "site"] = "atlantis"
    rows.loc[rows.index[5:10], "mean radius"] = np.nan
    rows.loc[rows.index[10:15], "note"] = ""
    rows.to_csv(workdir / "raw.csv", index=False)
    out = cli("predict", f"runs:/{result['run_id']}", "--input", "raw.csv", "--output", "pred.csv",
              "--provider", "cpu")
    assert out.exit_code == 0
    predicted = pd.read_csv(workdir / "pred.csv")["prediction"].astype(str).to_numpy()
    assert (predicted == _torch_labels(result, rows)).all()
    script = subprocess.run([sys.executable, str(EXAMPLE), result["onnx_path"], "raw.csv", "--provider", "cpu"],
                            capture_output=True, text=True, check=True)
    assert [line.split(",")[0] for line in script.stdout.splitlines()[1:]] == list(predicted)

    import mlflow

    served = mlflow.pyfunc.load_model(result["model_uri"]).predict(rows.where(rows.notna(), None))
    assert list(served["prediction"]) == list(predicted)  # the MLflow pyfunc (mlflow models serve) on null cells

    # a missing input column is one line naming it
    rows.drop(columns="site").to_csv(workdir / "lacking.csv", index=False)
    bad = cli("predict", f"runs:/{result['run_id']}", "--input", "lacking.csv", "--provider", "cpu", ok=False)
    assert bad.exit_code == 1 and "no column 'site'" in bad.output


def _torch_labels(result: dict, rows: pd.DataFrame) -> np.ndarray:
    """Labels of the training-side pipeline: the preprocessing re-fitted on the run's training rows, then
    the checkpoint's torch model."""
    import torch

    from trainforge.contracts import DataMeta
    from trainforge.tracking import store
    from trainforge.training import data as data_mod
    from trainforge.training.checkpoint import load as load_checkpoint
    from trainforge.training.modeling import InferenceModel, build_model
    from trainforge.training.tasks import get_task

    checkpoint = load_checkpoint(store.download(result["run_id"], "checkpoints/best.pt"))
    config, meta = checkpoint["config"], DataMeta.from_dict(checkpoint["meta"])
    model = build_model(config["model"], meta)
    model.load_state_dict(checkpoint["state_dict"])
    prep = data_mod.load(config["dataset"], config["trainer"], task=meta.task).meta.table
    wrapped = InferenceModel(model.eval(), get_task(meta.task, meta=meta)).eval()
    with torch.inference_mode():
        probs = wrapped(torch.from_numpy(prep.transform(rows)))[1].numpy()
    return np.asarray(meta.class_names)[probs.argmax(1)]


def test_the_gate_refuses_when_the_preprocessing_sides_differ():
    """A training-side imputer that no longer matches the graph is a refused export."""
    import torch

    from trainforge.exporting.tabular import attach, raw_parity, torch_reference
    from trainforge.training.tabular import fit_table

    frame = messy_frame(rows=120).drop(columns="target")
    prep = fit_table(frame.iloc[:80])
    prep.heldout = frame.iloc[80:].reset_index(drop=True)
    width = len(prep.feature_names)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(width, 2), torch.nn.Softmax(dim=1)).eval()
    with torch.no_grad():
        net[0].weight *= 1e-3  # raw areas are ~1000: keep the probabilities off 0 and 1, where a change shows

    class Two(torch.nn.Module):
        def forward(self, x):
            p = net(x)
            return torch.log(p), p

    wrapped = Two().eval()
    path = "two.onnx"
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        torch.onnx.export(wrapped, (torch.zeros(2, width),), f"{tmp}/{path}", input_names=["input"],
                          output_names=["logits", "probabilities"], dynamo=True, external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
        import onnx

        merged = attach(onnx.load(f"{tmp}/{path}"), prep, "input")
    figures = raw_parity(merged, prep, torch_reference(wrapped), ["logits", "probabilities"], "classification")
    assert figures["argmax_agreement"] == 1.0 and figures["rows"] > len(prep.heldout)
    prep.transformer.named_transformers_["numeric"].statistics_ += 50.0  # the two sides now impute differently
    with pytest.raises(ExportError, match="raw-row parity failed"):
        raw_parity(merged, prep, torch_reference(wrapped), ["logits", "probabilities"], "classification")


@pytest.mark.parametrize("model", ["random-forest", "linear-svm"])
def test_estimators_take_raw_tables(model, tmp_path, monkeypatch):
    """The scikit-learn kinds on the same preprocessing: one graph from raw columns, the same raw-row gate."""
    import trainforge
    from trainforge.run.api import load_data

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    messy_frame(rows=200).to_csv("messy.csv", index=False)
    small = {"model__n_estimators": 20} if model == "random-forest" else {}
    result = trainforge.train(model__name=model, dataset__name="csv", dataset__path="messy.csv",
                              dataset__target="target", quiet=True, **small)
    run = mlflow_client(tmp_path).get_run(result.run_id)
    assert run.data.metrics["onnx_raw_argmax_agreement"] == 1.0 and run.data.metrics["onnx_raw_rows"] > 40
    assert {a.path for a in mlflow_client(tmp_path).list_artifacts(result.run_id)} >= {"data_report.json"}
    session, meta = _raw_session(result.onnx_path)
    assert {i.name: i.type for i in session.get_inputs()}["site"] == "tensor(string)"
    rows = messy_frame(seed=1, rows=60).drop(columns="target")
    rows.loc[rows.index[:5], "site"] = "atlantis"
    rows.loc[rows.index[5:10], "mean radius"] = np.nan
    probs = session.run(["probabilities"], raw_inputs(rows, [Column.from_dict(c) for c in meta["columns"]]))[0]
    prep = load_data(result.config).meta.table
    np.testing.assert_array_equal(probs.argmax(1), result.model.predict(prep.transform(rows)))
    from trainforge.estimators.kind import export_run

    again = export_run(result.run_id, tmp_path / "again.onnx")  # reloads the skops file, re-fits the preprocessing
    assert again.raw_parity["argmax_agreement"] == 1.0 and _raw_session(str(again.path))[1]["columns"] == meta["columns"]


# -- fault rows on raw tables (the contract of tests/test_fault_suite.py: real processes, one line, nothing lost)
@pytest.fixture(scope="module")
def raw_run(tmp_path_factory):
    import trainforge

    root = tmp_path_factory.mktemp("rawrun")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        fault_frame(0, 150).to_csv("messy.csv", index=False)
        result = trainforge.train(model__name="logistic-regression", dataset__name="csv", dataset__path="messy.csv",
                                  dataset__target="target", quiet=True)
    return root, result


def fault_frame(seed: int, rows: int) -> pd.DataFrame:
    """:func:`messy_frame` plus an integer column and a Yes/No column (read as numeric and boolean)."""
    frame = messy_frame(seed=seed, rows=rows)
    rng = np.random.default_rng(seed)
    return frame.assign(visits=rng.integers(0, 4, len(frame)), smoker=rng.choice(["Yes", "No"], len(frame)))


def test_raw_run_serves_integer_and_yes_no_columns(raw_run):
    """The pyfunc's input example and signature follow the column types (before: an int64 column failed
    MLflow's schema check when the run was logged, and a Yes/No column was declared double)."""
    import mlflow

    root, result = raw_run
    rows = fault_frame(3, 20).drop(columns="target")
    served = mlflow.pyfunc.load_model(result.model_uri).predict(rows.where(rows.notna(), None))
    session, meta = _raw_session(result.onnx_path)
    probs = session.run(["probabilities"], raw_inputs(rows, [Column.from_dict(c) for c in meta["columns"]]))[0]
    assert list(served["prediction"]) == list(np.asarray(meta["class_names"])[probs.argmax(1)])
    types = {c["name"]: c["type"] for c in meta["columns"]}
    assert (types["visits"], types["smoker"]) == ("numeric", "boolean")


def _rows(kind: str) -> pd.DataFrame:
    rows = fault_frame(2, 30).drop(columns="target")
    if kind == "missing-column":
        return rows.drop(columns="mean texture")
    if kind == "wrong-type":
        return rows.assign(**{"mean area": "large"})
    if kind == "all-missing":
        return rows.assign(**{"mean area": np.nan})
    return rows.assign(site="atlantis")  # unseen-levels


RAW_FAULTS = {  # rows to predict -> (exit code, the one Error line, or the warning of the documented handling)
    "missing-column": (1, "no column 'mean texture' (the model takes"),
    "wrong-type": (1, "column 'mean area': 35 of 35 value(s) are not numbers (e.g. 'large')"),
    "all-missing": (0, "column 'mean area' is empty in every row: filled with the training value"),
    "unseen-levels": (0, "column 'site': 35 value(s) never seen in training (e.g. 'atlantis') take the unknown level"),
}


@pytest.mark.parametrize("kind", list(RAW_FAULTS))
def test_raw_table_predict_faults(raw_run, kind, tmp_path):
    from faults import no_partial_files, one_line, tf

    root, result = raw_run
    code, text = RAW_FAULTS[kind]
    _rows(kind).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "out.csv").write_text("GOOD\n")
    done = tf(root, "predict", f"runs:/{result.run_id}", "--input", str(tmp_path / "in.csv"), "--output",
              str(tmp_path / "out.csv"), "--provider", "cpu")
    assert done.returncode == code, done.stderr
    if code:
        assert text in one_line(done.stderr)
        assert (tmp_path / "out.csv").read_text() == "GOOD\n"  # an existing output is left as it was
    else:
        assert text in done.stderr and "Traceback" not in done.stderr
        assert len(pd.read_csv(tmp_path / "out.csv")) == 35  # every row predicted (30 + the 5 duplicates messy_frame adds)
    no_partial_files(tmp_path)


def test_raw_table_faults_at_training(cli, workdir):
    """A file of copies of one row is one line; an all-missing column is dropped (reason ``empty``)."""
    from faults import store_runs

    frame = messy_frame(rows=120)
    pd.concat([frame.iloc[:1]] * 40).to_csv(workdir / "dups.csv", index=False)
    done = cli("train", "--model", "logistic-regression", "--dataset", "csv", "-p", "dataset.path=dups.csv",
               "-p", "dataset.target=target", "-p", "dataset.task=classification", "--quiet", ok=False)
    assert done.exit_code == 1
    assert "dups.csv: its 40 rows are copies of 1 distinct row(s)" in done.output and "Traceback" not in done.output
    assert not store_runs(workdir)
    columns = {c.name: c for c in infer_columns(frame.assign(empty=np.nan).drop(columns="target"))}
    assert (columns["empty"].type, columns["empty"].reason) == ("drop", "empty")


def test_a_real_messy_table_trains_as_it_is(tmp_path, monkeypatch):
    """``penguins-raw.csv`` as the palmerpenguins package ships it (empty cells, constant columns, a Yes/No
    column, free-text comments, integer columns): one declaration (its dates), then train, export, predict."""
    import palmerpenguins

    import trainforge

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    table = Path(palmerpenguins.__file__).parent / "data" / "penguins-raw.csv"
    frame = pd.read_csv(table)
    assert frame.isna().any().sum() >= 6  # a messy table: several columns with empty cells
    result = trainforge.train(model__name="logistic-regression", dataset__name="csv", dataset__path=str(table),
                              dataset__target="Island", dataset__columns={"Date Egg": "drop"}, quiet=True)
    assert result.metrics["test_accuracy"] >= 0.8  # measured 0.870 (benchmarks/bench_rawtables.py, seed 0)
    run = mlflow_client(tmp_path).get_run(result.run_id)
    assert run.data.metrics["onnx_raw_argmax_agreement"] == 1.0
    assert run.data.tags["trainforge.dropped_columns"] == "Region (constant), Stage (constant), Date Egg (declared)"
    session, meta = _raw_session(result.onnx_path)
    rows = frame.drop(columns="Island").head(40)
    probs = session.run(["probabilities"], raw_inputs(rows, [Column.from_dict(c) for c in meta["columns"]]))[0]
    assert (np.asarray(meta["class_names"])[probs.argmax(1)] == frame["Island"].head(40)).mean() >= 0.8
