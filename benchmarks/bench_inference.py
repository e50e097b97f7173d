"""Inference: the exported model in onnxruntime (fp32 and int8) vs the same model in torch eager.

Both models are trained here (digits, 30 epochs, the real ``trainforge.train`` path, which exports the
verified ONNX file). torch eager runs :class:`~trainforge.training.modeling.InferenceModel` (the exact module that
was exported: logits and softmax) under ``torch.inference_mode()``. onnxruntime runs with
:func:`trainforge.exporting.predictor.session_options` (what ``trainforge predict`` uses) and, for reference, with
onnxruntime's default options. The int8 model comes from :func:`trainforge.exporting.quantize.quantize_run`
(``trainforge export --quantize int8``). Same thread count for torch and onnxruntime.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import Check, Section, Stats, log

BATCHES = (1, 64, 1024)
CALLS = {1: 1000, 64: 200, 1024: 40}  # calls per round: enough for a p99 at batch 1


def _latencies(fn: Callable[[], Any], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _train(name: str, epochs: int) -> dict[str, Any]:
    from trainforge.run.api import train

    result = train(model__name=name, dataset__name="digits", trainer__epochs=epochs, trainer__patience=0,
                   trainer__device="cpu", experiment="bench-inference", quiet=True)
    return {"run_id": result.run_id, "onnx": result.onnx_path, "test_accuracy": result.metrics["test_accuracy"]}


def _torch_model(run_id: str) -> Any:
    from trainforge.tracking import checkpoints
    from trainforge.training.checkpoint import rebuild
    from trainforge.training.modeling import InferenceModel

    model, task, _meta, _config = rebuild(checkpoints.fetch(run_id))
    return InferenceModel(model, task).eval()


def _contenders(onnx_path: str, int8_path: str, module: Any, x: np.ndarray, threads: int) -> dict[str, Callable]:
    import onnxruntime as ort
    import torch

    from trainforge.exporting.predictor import session_options

    xt = torch.from_numpy(x)

    def eager() -> Any:
        with torch.inference_mode():
            return module(xt)

    tuned = ort.InferenceSession(onnx_path, session_options(threads), providers=["CPUExecutionProvider"])
    default = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(int8_path, session_options(threads), providers=["CPUExecutionProvider"])
    feed = {"input": x}
    return {
        "torch eager": eager,
        "ORT fp32 (tuned)": lambda: tuned.run(None, feed),
        "ORT fp32 (default options)": lambda: default.run(None, feed),
        "ORT int8 (tuned)": lambda: int8.run(None, feed),
    }


def _measure(contenders: dict[str, Callable], batch: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Per contender: lists over rounds of p50, p99 (seconds) and throughput (rows/s)."""
    names = list(contenders)
    calls = CALLS[batch]
    for fn in contenders.values():  # warm-up: allocations, first-run graph work
        _latencies(fn, max(10, calls // 10))
    out = {n: {"p50": [], "p99": [], "rows_per_s": []} for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            lat = _latencies(contenders[name], calls)
            out[name]["p50"].append(statistics.median(lat))
            out[name]["p99"].append(_p(lat, 0.99))
            out[name]["rows_per_s"].append(batch * len(lat) / sum(lat))
    return out


def _idle_cpu(fn: Callable[[], Any], idle: float = 0.1, rounds: int = 10) -> float:
    """CPU seconds this process burns while idle for ``idle`` s right after one call (thread-pool spinning);
    median over ``rounds``."""
    out = []
    for _ in range(rounds):
        fn()
        started = time.process_time()
        time.sleep(idle)
        out.append(time.process_time() - started)
    return statistics.median(out)


def _cuda_section(section: Section, models: dict[str, dict[str, Any]], repeats: int) -> None:
    """CUDA provider with IO binding vs torch on CUDA; skipped, and said so, without a usable GPU."""
    import torch

    from trainforge.exporting.providers import cuda_usable

    ok, why = cuda_usable()
    if not ok or not torch.cuda.is_available():
        reason = why or "torch sees no CUDA GPU"
        section.add(f"**CUDA (IO binding) vs torch on CUDA: skipped** — {reason}.", "")
        log(f"[inference] CUDA benchmark skipped: {reason}")
        return
    import onnxruntime as ort

    from trainforge.exporting.predictor import session_options
    from trainforge.exporting.providers import CUDA, session_providers

    rows = []
    for name, info in models.items():
        module = info["module"].to("cuda")
        session = ort.InferenceSession(info["onnx"], session_options(), providers=session_providers([CUDA]))
        for batch in BATCHES:
            x = np.ascontiguousarray(info["x"][:batch])
            xt = torch.from_numpy(x).to("cuda")
            binding = session.io_binding()
            binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            for out in session.get_outputs():
                binding.bind_output(out.name, "cuda")

            def ort_cuda(binding: Any = binding, session: Any = session) -> None:
                session.run_with_iobinding(binding)

            def torch_cuda(xt: Any = xt, module: Any = module) -> None:
                with torch.inference_mode():
                    module(xt)
                torch.cuda.synchronize()

            res = _measure({"torch CUDA": torch_cuda, "ORT CUDA + IO binding": ort_cuda}, batch, repeats)
            speed = Stats.of([a / b for a, b in zip(res["torch CUDA"]["p50"], res["ORT CUDA + IO binding"]["p50"], strict=True)])
            rows.append([name.upper(), batch, Stats.of(res["torch CUDA"]["p50"]).fmt(scale=1e6),
                         Stats.of(res["ORT CUDA + IO binding"]["p50"]).fmt(scale=1e6), speed.fmt()])
        info["module"].to("cpu")
    section.add("CUDA: onnxruntime's CUDA provider with inputs and outputs bound on the device (IO binding) "
                "vs torch eager on CUDA (synchronized). p50 latency in µs.", "")
    section.table(["model", "batch", "torch CUDA p50", "ORT CUDA p50", "speed-up"], rows)


def run(repeats: int = 5, epochs: int = 30, threads: int | None = None, models: tuple[str, ...] = ("mlp", "cnn")) -> Section:
    import os

    import onnxruntime as ort
    import torch

    from trainforge.exporting.quantize import quantize_run
    from trainforge.run.api import build_config
    from trainforge.training import data as data_mod

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    section = Section("Inference: onnxruntime vs torch eager (fp32 and int8)")
    cfg = build_config(dataset__name="digits")
    bundle = data_mod.load(cfg["dataset"], cfg["trainer"])
    test = bundle.test.x.numpy()
    pool = np.ascontiguousarray(np.concatenate([test] * (1024 // len(test) + 1))[:1024])
    info: dict[str, dict[str, Any]] = {}
    quant_rows, latency_rows, idle_rows = [], [], []
    for name in models:
        log(f"[inference] training and exporting {name} ({epochs} epochs)")
        trained = _train(name, epochs)
        q = quantize_run(trained["run_id"], trained["onnx"], Path(trained["onnx"]).with_name("model.int8.onnx"))
        module = _torch_model(trained["run_id"])
        info[name] = {**trained, "int8": str(q.path), "module": module, "x": pool}
        m = q.metrics
        speedups = {}
        for batch in BATCHES:
            log(f"[inference] {name} batch {batch}: {repeats} rounds")
            x = np.ascontiguousarray(pool[:batch])
            res = _measure(_contenders(trained["onnx"], str(q.path), module, x, threads), batch, repeats)
            base = res["torch eager"]["p50"]
            for contender, vals in res.items():
                speed = Stats.of([b / v for b, v in zip(base, vals["p50"], strict=True)])
                latency_rows.append([
                    name.upper(), batch, contender, Stats.of(vals["p50"]).fmt(scale=1e6),
                    Stats.of(vals["p99"]).fmt(scale=1e6), f"{Stats.of(vals['rows_per_s']).median:,.0f}",
                    "1" if contender == "torch eager" else speed.fmt(),
                ])
                speedups[(batch, contender)] = speed
        x1 = np.ascontiguousarray(pool[:1])
        for contender, fn in _contenders(trained["onnx"], str(q.path), module, x1, threads).items():
            idle_rows.append([name.upper(), contender, f"{_idle_cpu(fn) * 1e3:.1f}"])
        s1 = speedups[(1, "ORT fp32 (tuned)")]
        section.checks.append(Check(f"ORT fp32 / torch eager speed-up at batch 1, {name.upper()}", s1.median, 3.0,
                                    op=">=", note=f"min {s1.min:.2f}, max {s1.max:.2f}"))
        drop = 0.0 - m.get("accuracy_change_points", float("nan")) + 0.0
        section.checks.append(Check(f"int8 accuracy loss (points), {name.upper()}", drop, 0.5,
                                    note=f"{q.method}; fp32 {m.get('fp32_accuracy', 0):.4f} -> int8 "
                                         f"{m.get('int8_accuracy', 0):.4f} on {int(m.get('rows', 0))} test rows"))
        quant_rows.append([
            name.upper(), q.method, q.calibration_rows or "—", f"{m.get('fp32_accuracy', 0):.4f}",
            f"{m.get('int8_accuracy', 0):.4f}", f"{m.get('accuracy_change_points', 0):+.2f}",
            f"{m.get('prediction_agreement', 0):.4f}", f"{q.bytes_fp32 / 1024:.0f} → {q.bytes_int8 / 1024:.0f}",
            " / ".join(speedups[(b, "ORT int8 (tuned)")].fmt() for b in BATCHES),
            " / ".join(_int8_vs_fp32(speedups, b) for b in BATCHES),
        ])
    opts = ", ".join(f"{k}={v}" for k, v in _describe(threads).items())
    section.add(
        f"Digits models trained here (30 epochs), batch sizes {', '.join(map(str, BATCHES))}; {repeats} "
        f"interleaved rounds of {CALLS[1]}/{CALLS[64]}/{CALLS[1024]} calls (batch 1/64/1024) per contender. "
        f"Cells: median over rounds (min–max). Threads: torch {threads}, onnxruntime {threads}. "
        f"onnxruntime {ort.__version__}, tuned options (`trainforge.exporting.predictor.session_options`): {opts}.", "")
    section.table(["model", "batch", "runtime", "p50 µs", "p99 µs", "rows/s", "speed-up vs torch (p50)"],
                  latency_rows)
    section.add("CPU left busy after a call: milliseconds of CPU this process used during the 100 ms of idle "
                "time right after one batch-1 call (median of 10). onnxruntime's default options keep the pool "
                "threads spinning after a call; the tuned options spin only inside a call "
                "(`session.force_spinning_stop`).", "")
    section.table(["model", "runtime", "CPU ms in 100 ms idle after a call"], idle_rows)
    section.add("### int8 (`trainforge export RUN_ID --quantize int8`)", "",
                "Accuracy on the run's test split (360 rows: one row is 0.28 points). Speed-up is p50 latency "
                "vs torch eager (and vs ORT fp32) at batch 1 / 64 / 1024.", "")
    section.table(["model", "method", "calibration rows", "fp32 acc", "int8 acc", "change (points)",
                   "agreement", "size KiB", "int8 vs torch", "int8 vs ORT fp32"], quant_rows)
    _cuda_section(section, info, repeats)
    return section


def _int8_vs_fp32(speedups: dict[tuple[int, str], Stats], batch: int) -> str:
    fp32, int8 = speedups[(batch, "ORT fp32 (tuned)")], speedups[(batch, "ORT int8 (tuned)")]
    return f"{int8.median / fp32.median:.2f}"


def _describe(threads: int) -> dict[str, str]:
    from trainforge.exporting.predictor import session_options

    o = session_options(threads)
    return {"intra_op_num_threads": str(o.intra_op_num_threads), "inter_op_num_threads": str(o.inter_op_num_threads),
            "allow_spinning": o.get_session_config_entry("session.intra_op.allow_spinning"),
            "force_spinning_stop": o.get_session_config_entry("session.force_spinning_stop"),
            "graph_optimization_level": str(o.graph_optimization_level).rsplit(".", 1)[-1]}


if __name__ == "__main__":
    print(run(repeats=3).markdown())
