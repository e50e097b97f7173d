"""Bad input: exit code 1, exactly one ``Error: ...`` line, no traceback; runs that were opened end FAILED."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import error_line, mlflow_client

from trainforge.exporting.providers import cuda_usable

TRAIN = ("train", "--epochs", "1", "--quiet", "--no-export")


def _runs(workdir):
    client = mlflow_client(workdir)
    if not (workdir / "mlruns" / "mlflow.db").exists():
        return []
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("option, name, listed", [
    ("--model", "resnet9000", ("mlp", "cnn")),
    ("--optimizer", "lion", ("adam", "sgd", "adamw")),
    ("--dataset", "imagenet", ("digits", "iris", "csv")),
])
def test_unknown_plugin_lists_available(cli, workdir, option, name, listed):
    line = error_line(cli(*TRAIN, option, name, ok=False))
    assert name in line and "available" in line
    for other in listed:
        assert other in line
    assert _runs(workdir) == []  # refused before any run was opened


def test_unknown_plugin_through_console_script(run_cli):
    proc = run_cli("train", "--model", "resnet9000", "--quiet", check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "mlp" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_hyperparameter_lists_valid_ones(cli, workdir):
    line = error_line(cli(*TRAIN, "--dataset", "iris", "-p", "model.nonexistent=1", ok=False))
    assert "nonexistent" in line and "hidden_sizes" in line and "dropout" in line


@pytest.mark.parametrize("param, fragment", [
    ("modeldropout=0.1", "SECTION.KEY=VALUE"),
    ("nosection.x=1", "nosection"),
    ("trainer.batch_size=0", "trainer.batch_size"),
])
def test_malformed_parameters(cli, workdir, param, fragment):
    assert fragment in error_line(cli(*TRAIN, "--dataset", "iris", "-p", param, ok=False))


def test_missing_config_file(cli, workdir):
    assert "nope.yaml" in error_line(cli(*TRAIN, "--config", "nope.yaml", ok=False))


def test_missing_csv_file(cli, workdir):
    line = error_line(cli(*TRAIN, "--dataset", "csv", "-p", "dataset.path=missing.csv", ok=False))
    assert "missing.csv" in line


def test_csv_without_path(cli, workdir):
    assert "dataset.path" in error_line(cli(*TRAIN, "--dataset", "csv", ok=False))


def _csv(workdir, rows: list[list], name: str = "data.csv") -> str:
    pd.DataFrame(rows, columns=["a", "b", "label"]).to_csv(workdir / name, index=False)
    return name


def _rows(n: int = 30) -> list[list]:
    return [[float(i), float(i % 7), i % 2] for i in range(n)]


def test_empty_csv_target_names_file_row_and_column(cli, workdir):
    rows = _rows()
    rows[4][2] = None  # data row 5 = line 6 of the file (the header is line 1)
    name = _csv(workdir, rows)
    line = error_line(cli(*TRAIN, "--dataset", "csv", "-p", f"dataset.path={name}", ok=False))
    assert name in line and "row 5" in line and "line 6" in line and "'label'" in line and "empty" in line


def test_a_half_numeric_column_is_refused_naming_the_column(cli, workdir):
    rows = [[f"x{i}" if i % 3 == 0 else i + 0.5, float(i % 7), i % 2] for i in range(30)]  # a third not numbers
    name = _csv(workdir, rows)
    line = error_line(cli(*TRAIN, "--dataset", "csv", "-p", f"dataset.path={name}", ok=False))
    assert "'a'" in line and "not numbers" in line and "dataset.columns" in line


@pytest.mark.parametrize("bad", [float("nan"), None, "abc"])
def test_one_empty_or_junk_feature_cell_is_imputed_not_refused(cli, workdir, bad):
    """The raw-tables issue's first complaint: one empty (or one junk) cell refused the whole file. Now the
    cell is filled (median) and a missing-indicator feature is added, as data_report.json records."""
    import json

    rows = [[i + 0.5, float(i % 7), i % 2] for i in range(30)]
    rows[9][0] = bad  # line 11
    name = _csv(workdir, rows)
    result = cli(*TRAIN, "--dataset", "csv", "-p", f"dataset.path={name}", "--json")
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.output.strip().splitlines()[-1])["run_id"]
    report = json.loads(Path(mlflow_client(workdir).download_artifacts(run_id, "data_report.json", str(workdir)))
                        .read_text())
    assert report["rows_read"] == 30
    (a,) = [c for c in report["columns"] if c["name"] == "a"]
    assert a["type"] == "numeric" and a["fill"] > 0 and a["missing"] + a["junk"] <= 1, a  # row 10 may be a test row


def test_missing_target_column(cli, workdir):
    name = _csv(workdir, _rows())
    line = error_line(cli(*TRAIN, "--dataset", "csv", "-p", f"dataset.path={name}", "-p", "dataset.target=y",
                          ok=False))
    assert "'y'" in line and "label" in line


def test_model_task_mismatch_fails_before_training(cli, workdir):
    line = error_line(cli(*TRAIN, "--model", "cnn", "--dataset", "iris", ok=False))
    assert "cnn" in line and "image" in line and "iris" in line and "mlp" in line
    assert _runs(workdir) == []


def test_divergence_marks_run_failed(cli, workdir):
    line = error_line(cli("train", "--model", "mlp", "--dataset", "iris", "--lr", "1e6", "-p", "optimizer.name=sgd",
                          "--epochs", "3", "--quiet", "--no-export", ok=False))
    assert "diverged" in line
    (run,) = _runs(workdir)
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["trainforge.error"]


def test_precision_16_mixed_refused_on_cpu(cli, workdir):
    line = error_line(cli(*TRAIN, "--dataset", "iris", "--device", "cpu", "--precision", "16-mixed", ok=False))
    assert "16-mixed" in line and "CUDA" in line
    assert all(run.info.status == "FAILED" for run in _runs(workdir))  # never left RUNNING or FINISHED


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: --device cuda runs (tests/test_gpu.py)")
def test_cuda_device_refused_without_gpu(cli, workdir):
    line = error_line(cli(*TRAIN, "--dataset", "iris", "--device", "cuda", ok=False))
    assert "cuda" in line.lower()


# -- predict and export ------------------------------------------------------------------------------


def test_predict_wrong_column_count(digits_run, cli, workdir):
    pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "c": [5.0, 6.0]}).to_csv(workdir / "three.csv", index=False)
    line = error_line(cli("predict", digits_run.result["onnx_path"], "--input", "three.csv", ok=False))
    assert "three.csv" in line and "3" in line and "64" in line


def test_predict_bad_values(digits_run, cli, workdir):
    frame = pd.DataFrame([[float(i % 16)] * 64 for i in range(5)], columns=[f"x{i}" for i in range(64)])
    frame = frame.astype(object)
    frame.iloc[2, 5] = "oops"  # line 4
    frame.to_csv(workdir / "text.csv", index=False)
    line = error_line(cli("predict", digits_run.result["onnx_path"], "--input", "text.csv", ok=False))
    assert "text.csv" in line and "4" in line and "x5" in line and "oops" in line

    frame.iloc[2, 5] = float("nan")
    frame.to_csv(workdir / "nan.csv", index=False)
    line = error_line(cli("predict", digits_run.result["onnx_path"], "--input", "nan.csv", ok=False))
    assert "nan.csv" in line and "NaN" in line


@pytest.mark.parametrize("args, fragment", [
    (("--input", "absent.csv"), "absent.csv"),
    pytest.param(("--input", "x.csv", "--provider", "cuda"), "CUDA", marks=pytest.mark.skipif(
        cuda_usable()[0], reason="the CUDA EP runs here: predict --provider cuda works (tests/test_gpu.py)")),
])
def test_predict_input_and_provider_errors(digits_run, cli, workdir, args, fragment):
    pd.DataFrame({"a": [1.0]}).to_csv(workdir / "x.csv", index=False)
    assert fragment in error_line(cli("predict", digits_run.result["onnx_path"], *args, ok=False))


def test_predict_missing_model(cli, workdir):
    pd.DataFrame({"a": [1.0]}).to_csv(workdir / "x.csv", index=False)
    assert "nothere.onnx" in error_line(cli("predict", "nothere.onnx", "--input", "x.csv", ok=False))


def test_export_unknown_run(digits_run, cli, workdir):
    line = error_line(cli("export", "0123456789abcdef", "--tracking-uri", digits_run.tracking_uri, ok=False))
    assert "0123456789abcdef" in line
