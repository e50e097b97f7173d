"""The GPU path where it can be tested: every CPU half runs here; each GPU half skips without a GPU, saying why.

Resume (state loaded after the model is on its device, CUDA RNG and GradScaler state, old checkpoints), the
DDP backend and the --nproc check, per-task device constants, onnxruntime's CUDA provider checks, the export
gate on the CUDA EP, ``trainforge doctor``, MLflow system metrics and ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import error_line, last_json, mlflow_client

from trainforge.exporting import providers
from trainforge.run.api import build_config, load_data, seed_everything
from trainforge.training.modeling import build_model, build_optimizer
from trainforge.training.tasklib import Reconstruction
from trainforge.training.tasks import Regression, get_task
from trainforge.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
GPU = torch.cuda.is_available()
CUDA_EP, WHY_NOT = providers.cuda_usable()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for NCCL DDP")
needs_cuda_ep = pytest.mark.skipif(not CUDA_EP, reason=f"onnxruntime's CUDA EP cannot run here: {WHY_NOT}")


def _driver_loads() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


# -- resume -------------------------------------------------------------------------------------------------


def _fit(device: str, precision: str, epochs: int, state: dict | None = None) -> Trainer:
    """Fit the MLP on iris for ``epochs`` as ``trainforge.train`` builds it, optionally from a saved state."""
    cfg = build_config(model__name="mlp", dataset__name="iris", trainer__epochs=epochs, trainer__patience=0,
                       trainer__device=device, trainer__precision=precision)
    seed_everything(0)
    bundle = load_data(cfg)
    model = build_model(cfg["model"], bundle.meta)
    optimizers = model.configure_optimizers(lambda params: build_optimizer(cfg["optimizer"], params))
    trainer = Trainer(model, optimizers, get_task(bundle.meta.task, meta=bundle.meta), cfg["trainer"],
                      output_dim=bundle.meta.output_dim)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.fit(bundle)


def _through_disk(state: dict, tmp_path: Path, drop: tuple[str, ...] = ()) -> dict:
    """What --resume loads: torch.save, then torch.load(map_location="cpu", weights_only=True) (CPU tensors)."""
    state = {k: v for k, v in state.items() if k not in drop}
    torch.save(state, tmp_path / "last.pt")
    return torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)


@pytest.mark.parametrize("device, precision, old_format", [
    ("cpu", "32", False),
    ("cpu", "32", True),  # a checkpoint from before the CUDA RNG and GradScaler states were saved
    pytest.param("cuda", "16-mixed", False, marks=needs_gpu),
    pytest.param("cuda", "32", True, marks=needs_gpu),
])
def test_resume_equals_an_uninterrupted_fit(device, precision, old_format, tmp_path):
    full = _fit(device, precision, 6)
    part = _fit(device, precision, 3)
    saved = part.state_dict()
    assert (saved["cuda_rng"] is not None) == (device == "cuda")
    assert (saved["scaler"] is not None) == (precision == "16-mixed")
    state = _through_disk(saved, tmp_path, ("cuda_rng", "scaler") if old_format else ())
    resumed = _fit(device, precision, 6, state)
    # the optimizer state sits on the device of its parameters (Adam's exp_avg/exp_avg_sq)
    for opt_state in resumed.optimizer.state.values():
        for key, value in opt_state.items():
            if key != "step" and isinstance(value, torch.Tensor):
                assert value.device == resumed.device, key
    assert len(resumed.history) == 6
    if device == "cuda" and old_format:  # without the saved CUDA RNG, dropout draws other masks: not the same
        return
    for got, want in zip(resumed.history, full.history, strict=True):
        # the CPU is bitwise reproducible; CUDA kernels may differ in the last bits between processes
        assert got == want if device == "cpu" else got == pytest.approx(want, rel=1e-5, abs=1e-7)


@needs_gpu
def test_cuda_checkpoint_resumes_on_cpu(tmp_path):
    state = _through_disk(_fit("cuda", "32", 3).state_dict(), tmp_path)
    resumed = _fit("cpu", "32", 5, state)
    assert resumed.device.type == "cpu" and len(resumed.history) == 5
    assert resumed.history[-1]["val_accuracy"] > 0.6


# -- DDP --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="2 GPUs are visible: --nproc 2 --device cuda runs")
def test_nproc_beyond_visible_gpus_is_one_error_line(cli, workdir):
    line = error_line(cli("train", "--model", "mlp", "--dataset", "iris", "--device", "cuda", "--nproc", "2",
                          "--epochs", "1", "--quiet", ok=False))
    assert "--nproc 2" in line and "needs one GPU per process" in line
    assert f"torch sees {torch.cuda.device_count()}" in line and "--device cpu" in line
    assert not (workdir / "mlruns").exists()  # refused before any process or run started


@needs_gpu
@pytest.mark.slow
def test_ddp_on_cpu_uses_gloo_where_cuda_is_visible(run_cli, workdir):
    out = last_json(run_cli("train", "--model", "mlp", "--dataset", "iris", "--epochs", "3", "--nproc", "2",
                            "--device", "cpu", "--quiet", "--json", "--no-export").stdout)
    tags = mlflow_client(workdir).get_run(out["run_id"]).data.tags
    assert tags["trainforge.distributed"] == "gloo, 2 processes"


@needs_two_gpus
@pytest.mark.slow
def test_ddp_on_two_gpus_uses_nccl(run_cli, workdir):
    out = last_json(run_cli("train", "--model", "mlp", "--dataset", "digits", "--epochs", "5", "--nproc", "2",
                            "--device", "cuda", "--quiet", "--json", "--no-export").stdout)
    run = mlflow_client(workdir).get_run(out["run_id"])
    assert run.data.tags["trainforge.distributed"] == "nccl, 2 processes"
    assert run.data.metrics["test_accuracy"] > 0.9


@needs_gpu
def test_cuda_device_and_16_mixed_train(cli, workdir):
    out = last_json(cli("train", "--model", "mlp", "--dataset", "iris", "--epochs", "3", "--device", "cuda",
                        "--precision", "16-mixed", "--quiet", "--json", "--no-export").output)
    assert out["epochs_run"] == 3 and out["config"]["trainer"]["device"] == "cuda"


# -- task constants live on the device ----------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
@pytest.mark.parametrize("task_cls", [Regression, Reconstruction])
def test_task_scale_is_copied_to_the_device_once(task_cls, device):
    std = torch.tensor([2.0, 4.0])
    task = task_cls(std)
    out, target = torch.randn(5, 2, device=device), torch.randn(5, 2, device=device)
    expected = (((out - target) / std.to(device)) ** 2).mean()
    assert torch.equal(task.loss(out, target), expected)
    first = task._scale.on(out.device)
    assert first.device == out.device and task._scale.on(out.device) is first  # cached: no copy per step


# -- onnxruntime's CUDA provider ----------------------------------------------------------------------------


@pytest.mark.skipif(_driver_loads(), reason="an NVIDIA driver loads here")
def test_cuda_ep_is_not_usable_without_a_driver():
    ok, why = providers.cuda_usable()
    assert not ok
    if providers.CUDA in providers.onnxruntime_info()["providers"]:
        assert why == "no NVIDIA driver"
    else:
        assert "onnxruntime-gpu" in why
    assert providers.usable_providers("auto") == [providers.CPU]


@pytest.mark.skipif(providers.onnxruntime_info()["cuda_version"] is None, reason="a CPU build of onnxruntime")
def test_preload_is_quiet_and_the_missing_library_is_named(capsys):
    failed = providers.preload()
    assert capsys.readouterr().out == ""  # preload_dlls prints; --json output must stay clean
    assert all(line.startswith(("Failed to load", "preload_dlls failed")) for line in failed)
    error = providers.provider_library_error()
    if error:  # this machine lacks a CUDA library: the loader's message names it, e.g. libcublasLt.so.13
        name = error.removesuffix(" not found")
        assert error.endswith(" not found") and name.startswith("lib") and ".so" in name and " " not in name
    else:
        pytest.skip("the CUDA provider library loads here: nothing to name")


def test_export_gate_records_the_cuda_ep(digits_run):
    meta = json.loads(_metadata(digits_run.result["onnx_path"])["trainforge.parity_cuda_max_abs_diff"])
    if CUDA_EP:
        assert meta and all(v <= 1e-4 for v in meta.values())
    else:
        assert meta is None


@needs_cuda_ep
def test_predict_on_the_cuda_ep_reproduces_the_run(digits_run, run_cli, workdir):
    uri = digits_run.tracking_uri
    run_cli("data", "--run", digits_run.run_id, "--output", "test.csv", "--tracking-uri", uri)
    out = last_json(run_cli("predict", f"runs:/{digits_run.run_id}", "--input", "test.csv", "--target", "target",
                            "--provider", "cuda", "--no-fallback", "--json", "--tracking-uri", uri).stdout)
    assert out["provider"] == providers.CUDA
    assert abs(out["metrics"]["accuracy"] - digits_run.result["metrics"]["test_accuracy"]) <= 1e-6


def _metadata(path: str) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(path).metadata_props}


# -- trainforge doctor --------------------------------------------------------------------------------------


def test_doctor_reports_this_machine(run_cli, workdir):
    import onnxruntime as ort

    report = json.loads(run_cli("doctor", "--json").stdout)
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    assert report["torch"]["version"] == torch.__version__ and report["torch"]["build"] == build
    assert report["torch"]["cuda_available"] == GPU
    assert report["onnxruntime"]["providers"] == ort.get_available_providers()
    assert report["onnxruntime"]["cuda_ep_usable"] == CUDA_EP
    assert report["mlflow"]["writable"] is True and report["mlflow"]["tracking_uri"].endswith("mlruns/mlflow.db")
    assert report["plugins"]["registered"] >= 30 and report["plugins"]["broken"] == 0
    assert report["missing"] == []
    text = run_cli("doctor").stdout
    if not _driver_loads() and providers.CUDA in ort.get_available_providers():
        assert report["onnxruntime"]["cuda_ep"] == "not usable (no NVIDIA driver)"
        assert "CUDA EP: not usable (no NVIDIA driver)" in text.splitlines()
    assert f"torch          {torch.__version__} ({build} build)" in text


@pytest.mark.skipif(GPU and CUDA_EP, reason="torch and onnxruntime both use a GPU here")
def test_doctor_require_gpu_fails_without_one(run_cli):
    proc = run_cli("doctor", "--require-gpu", "--json", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("Error: --require-gpu:")
    assert json.loads(proc.stdout)["missing"]


@pytest.mark.skipif(not (GPU and CUDA_EP), reason=f"needs a GPU for torch and the CUDA EP ({WHY_NOT or 'no GPU'})")
def test_doctor_require_gpu_passes_with_one(run_cli):
    assert run_cli("doctor", "--require-gpu").returncode == 0


def test_doctor_counts_a_broken_plugin_and_an_unwritable_store(cli, workdir, fresh_plugins, monkeypatch):
    site = workdir / "site"
    dist = site / "trainforge_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: trainforge-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[trainforge]\nbroken = trainforge_broken_plugin\n")
    (site / "trainforge_broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(site))
    (workdir / "a-file").write_text("not a folder")
    out = cli("doctor", "--json", "--tracking-uri", f"sqlite:///{workdir}/a-file/mlflow.db").output
    report = json.loads(out)
    assert report["plugins"]["entry_points"] == 1 and report["plugins"]["broken"] == 1
    (broken,) = report["plugins"]["broken_list"]
    assert broken["name"] == "broken" and broken["distribution"] == "trainforge-broken"
    assert "needs libfoo" in broken["error"]
    assert report["mlflow"]["writable"] is False and "a-file" in report["mlflow"]["detail"]
    assert "broken: 1" in cli("doctor").output


# -- MLflow system metrics ----------------------------------------------------------------------------------


def test_system_metrics_are_logged_on_the_run(cli, workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's documented knob
    out = last_json(cli("train", "--model", "mlp", "--dataset", "iris", "--epochs", "30", "--device", "cpu",
                        "--quiet", "--json", "--no-export", "-p", "trainer.system_metrics=true").output)
    client = mlflow_client(workdir)
    metrics = client.get_run(out["run_id"]).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    if GPU and "pynvml" in sys.modules:
        assert "system/gpu_0_utilization_percentage" in metrics
    assert len(client.get_metric_history(out["run_id"], "system/cpu_utilization_percentage")) >= 1


def test_system_metrics_are_off_by_default_and_checked(digits_run, cli):
    metrics = mlflow_client(digits_run.root).get_run(digits_run.run_id).data.metrics
    assert not [k for k in metrics if k.startswith("system/")]
    line = error_line(cli("train", "--dataset", "iris", "-p", "trainer.system_metrics=sometimes", ok=False))
    assert "trainer.system_metrics" in line


# -- benchmarks/gpu_check.sh ------------------------------------------------------------------------------------


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0


@pytest.mark.skipif(GPU, reason="a GPU is visible: the check would run for minutes (test_gpu_check_passes)")
def test_gpu_check_skips_without_a_gpu(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "no GPU: skipped"


@needs_gpu
@pytest.mark.slow
def test_gpu_check_passes(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                                                       "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout
