"""The ONNX export of ``trainforge train`` and ``tune`` in a forked worker (trainforge.exporting.worker): the
same file as an in-process export, a fallback when the worker dies, and no process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import onnx
import psutil
import pytest
from conftest import last_json, mlflow_client
from faults import EXE, _default_signals, _env

IRIS = ["-v", "train", "--model", "mlp", "--dataset", "iris", "--epochs", "3", "--quiet", "--json"]


def _train(workdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=workdir, env=_env(workdir, **env), capture_output=True, text=True,
                          timeout=300, preexec_fn=_default_signals)


def _graph(path: str) -> tuple[bytes, dict[str, str]]:
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    return model.graph.SerializeToString(), meta


def test_worker_exports_the_same_file_as_the_training_process(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    forked = _train(tmp_path / "a", *IRIS)
    inline = _train(tmp_path / "b", *IRIS, TRAINFORGE_EXPORT_WORKER="0")
    assert forked.returncode == 0 and inline.returncode == 0, forked.stderr + inline.stderr
    assert "ONNX export ran in the export worker" in forked.stderr
    assert "export worker" not in inline.stderr
    a, b = last_json(forked.stdout), last_json(inline.stdout)
    graph_a, meta_a = _graph(a["onnx_path"])
    graph_b, meta_b = _graph(b["onnx_path"])
    assert graph_a == graph_b  # same seed, same weights: the same graph, byte for byte
    assert meta_a["trainforge.mlflow_run_id"] == a["run_id"]
    for key in ("trainforge.task", "trainforge.class_names", "trainforge.feature_names", "trainforge.opset",
                "trainforge.normalization", "trainforge.parity_max_abs_diff"):
        assert meta_a[key] == meta_b[key], key
    run = mlflow_client(tmp_path / "a").get_run(a["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["trainforge.model_uri"]
    assert "onnx_parity_max_abs_diff_batch_1" in run.data.metrics


def test_tune_exports_the_best_in_its_worker_and_draws_the_plots_in_a_child(tmp_path):
    """``trainforge tune`` as a program forks the export worker at start and a plot process at the end: the
    parent run still holds the verified file, the registered model and every plot (drawn from a copy).
    Seeded: unseeded, both trials' architectures are random draws and a short fit can leave both at chance."""
    proc = _train(tmp_path, "-v", "tune", "--model", "mlp", "--dataset", "iris", "--quiet", "--epochs", "10",
                  "--n-trials", "2", "--pruner", "none", "--seed", "0", "--study", "prog", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "ONNX export ran in the export worker" in proc.stderr
    result = last_json(proc.stdout)
    client = mlflow_client(tmp_path)
    parent_id = result["parent_run_id"]
    files = {f.path for folder in (None, "onnx", "plots") for f in client.list_artifacts(parent_id, folder)}
    assert {"onnx/model.onnx", "trials.csv", "plots/optimization_history.png", "plots/parallel_coordinate.png",
            "plots/intermediate_values.png", "plots/param_importances.png"} <= files
    png = Path(client.download_artifacts(parent_id, "plots/optimization_history.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["test_accuracy"] > 0.5
    assert result["model_version"] == "1"


def _worker_of(proc: subprocess.Popen, timeout: float = 60) -> psutil.Process:
    """The export worker: the CLI process's child (a fork of it: the same command line)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        children = psutil.Process(proc.pid).children()
        if children:
            return children[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no export worker started")


def test_a_dead_worker_falls_back_to_exporting_in_process(tmp_path):
    proc = subprocess.Popen([EXE, *IRIS], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    worker = _worker_of(proc)
    assert worker.cmdline() == psutil.Process(proc.pid).cmdline()  # forked, not a new program
    worker.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "exporting in the training process" in err or "the export will run in the training process" in err
    result = last_json(out)
    assert Path(result["onnx_path"]).is_file() and result["parity_max_abs_diff"]["1"] < 1e-4
    assert mlflow_client(tmp_path).get_run(result["run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_worker_with_the_run(tmp_path, sig):
    """Ctrl-C to the process group (the worker ignores it; the parent ends it) or SIGTERM to the parent
    alone: the run ends KILLED and the worker is gone too."""
    proc = subprocess.Popen([EXE, "train", "--model", "mlp", "--dataset", "digits", "--epochs", "300", "--quiet",
                             "--patience", "0"], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals, process_group=0)
    worker = _worker_of(proc)
    assert proc.stderr.readline().startswith("run ")  # the run is open: training has started
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "Traceback" not in err
    worker.wait(timeout=10)  # raises psutil.TimeoutExpired if the worker outlived the run
    assert not worker.is_running()
