"""``trainforge doctor``: what will run where on this machine, as one report (the CLI prints it).

It gathers, without training anything or writing to the store: the torch build and its CUDA version, the
GPUs and the NVIDIA driver, the onnxruntime distribution, its providers and whether its CUDA provider
really loads (:func:`trainforge.exporting.providers.cuda_usable`, naming a missing library), whether the
CUDA majors of torch, onnxruntime and the driver agree, the MLflow store and whether it takes writes, the
installed plugins (entry points that fail to import count as broken), and the packages system metrics need.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any


def doctor(tracking_uri: str | None = None, require_gpu: bool = False) -> dict[str, Any]:
    """The report as a JSON-ready dict.

    Keys: ``torch``, ``driver``, ``onnxruntime``, ``cuda_majors``, ``mlflow``, ``plugins``,
    ``system_metrics``, ``runs_on`` (``train`` device and ``predict`` provider for ``auto``) and ``missing``:
    what ``require_gpu`` asked for and is not there (empty unless ``require_gpu``; the CLI exits 1 when
    it is not empty). Never raises for what it inspects: a failure is reported in the report.
    """
    from trainforge.exporting import providers
    from trainforge.tracking.store import store_status

    torch_part = _torch()
    driver = {**providers.driver(), "version": _driver_version()}
    ort = providers.onnxruntime_info()
    usable, why = providers.cuda_usable()
    ort["cuda_ep_usable"] = usable
    ort["cuda_ep"] = "usable" if usable else f"not usable ({why})"
    report = {
        "torch": torch_part,
        "driver": driver,
        "onnxruntime": ort,
        "cuda_majors": _majors(torch_part["cuda_version"], ort["cuda_version"], driver["cuda_version"]),
        "mlflow": store_status(tracking_uri),
        "plugins": _plugins(),
        "system_metrics": {"psutil": _has("psutil"), "nvidia-ml-py": _has("pynvml")},
        "runs_on": {"train --device auto": "cuda" if torch_part["cuda_available"] else "cpu",
                    "predict --provider auto": providers.CUDA if usable else providers.CPU},
        "missing": [],
    }
    if require_gpu:
        if not torch_part["cuda_available"]:
            reason = "a CPU build" if torch_part["cuda_version"] is None else driver["error"] or "no GPU visible"
            report["missing"].append(f"torch cannot train on a GPU ({reason})")
        if not usable:
            report["missing"].append(f"onnxruntime's CUDA EP is not usable ({why})")
    return report


def _torch() -> dict[str, Any]:
    import torch

    available = torch.cuda.is_available()
    gpus = []
    for index in range(torch.cuda.device_count() if available else 0):
        props = torch.cuda.get_device_properties(index)
        gpus.append({"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": f"{props.major}.{props.minor}"})
    return {"version": torch.__version__, "cuda_version": torch.version.cuda,
            "build": f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU",
            "cuda_available": available, "gpus": gpus,
            "bf16_supported": bool(available and torch.cuda.is_bf16_supported())}


def _driver_version() -> str | None:
    """The NVIDIA kernel driver's version (``/proc/driver/nvidia/version``, Linux), e.g. ``"550.54.14"``."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def _majors(torch_cuda: str | None, ort_cuda: str | None, driver_cuda: str | None) -> dict[str, Any]:
    """The CUDA majors of torch, onnxruntime-gpu and the driver (the newest it runs), and whether they fit:
    torch and onnxruntime load their own CUDA libraries in one process, so one major for both; the driver
    must support at least that major."""
    major = lambda v: int(v.split(".")[0]) if v else None  # noqa: E731
    t, o, d = major(torch_cuda), major(ort_cuda), major(driver_cuda)
    agree = None if t is None or o is None else t == o
    if t is None:
        note = "torch is a CPU build" + (f"; onnxruntime-gpu targets CUDA {o}" if o else "")
    elif o is None:
        note = "onnxruntime has no CUDA build"
    elif not agree:
        note = (f"torch uses CUDA {t} but onnxruntime-gpu CUDA {o}: install onnxruntime-gpu "
                f"{'<1.27' if t == 12 else '>=1.27'} (1.19-1.26 target CUDA 12, 1.27+ CUDA 13)")
    else:
        note = f"both CUDA {t}"
    too_new = [name for name, m in (("torch", t), ("onnxruntime", o)) if m and d and m > d]
    if too_new:
        note += f"; the driver supports CUDA up to {driver_cuda}: too old for {' and '.join(too_new)}"
    return {"torch": t, "onnxruntime": o, "driver": d, "agree": agree, "note": note}


def _plugins() -> dict[str, Any]:
    from trainforge import manager

    entry_points = manager.entry_point_health()
    broken = [e for e in entry_points if e["error"] and e["error"] != "blocked"]
    out: dict[str, Any] = {"entry_points": len(entry_points), "broken": len(broken), "broken_list": broken}
    try:
        entries = manager.entries()
    except Exception as exc:  # noqa: BLE001 - a registry that cannot be built is what the doctor reports
        out.update(registered=None, by_kind={}, error=f"{type(exc).__name__}: {exc}")
        return out
    by_kind: dict[str, int] = {}
    for entry in entries:
        by_kind[entry.plugin_type] = by_kind.get(entry.plugin_type, 0) + 1
    out.update(registered=len(entries), by_kind=by_kind, error="")
    return out


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None
