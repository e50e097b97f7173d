"""Which onnxruntime execution providers can run here, and why the CUDA one cannot.

onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a GPU; a session asked for it
then prints a loud error and silently runs on the CPU. So CUDA is requested only after
:func:`cuda_usable` has checked, in order: the provider is compiled in, the NVIDIA driver
(``libcuda.so.1``) loads and reports a GPU, and the provider library loads once
``onnxruntime.preload_dlls()`` (onnxruntime >= 1.21) has loaded the CUDA and cuDNN libraries of the
``nvidia-*`` wheels. When it still does not load, the reason names the library the dynamic loader could
not find (e.g. ``libcublasLt.so.13``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
from pathlib import Path
from typing import Any

from trainforge.errors import ConfigError

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
PROVIDERS = {"cuda": CUDA, "cpu": CPU}
#: Options of every CUDA session trainforge opens (the export gate's and ``predict``'s alike). onnxruntime's
#: CUDA provider runs float32 MatMul/Gemm/Conv in TF32 by default (``use_tf32=1``, a 10-bit mantissa), which
#: differs from torch's float32 by ~1e-3: more than the export gate's 1e-4. Off, CUDA output is what was checked.
CUDA_OPTIONS = {"use_tf32": "0"}


def onnxruntime_info() -> dict[str, Any]:
    """The installed onnxruntime: ``distribution`` (``onnxruntime`` or ``onnxruntime-gpu``), ``version``,
    ``cuda_version`` (the CUDA it was built for, e.g. ``"13.0"``; ``None`` for a CPU build) and ``providers``."""
    import onnxruntime as ort

    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:  # pragma: no cover - every onnxruntime wheel ships it
        info = None
    return {"distribution": getattr(info, "package_name", "onnxruntime"), "version": ort.__version__,
            "cuda_version": getattr(info, "cuda_version", None) or None,
            "providers": list(ort.get_available_providers())}


def driver() -> dict[str, Any]:
    """The NVIDIA driver through its CUDA driver API (``libcuda.so.1``, no torch needed): ``loaded``,
    ``gpus`` (device count), ``cuda_version`` (the newest CUDA it supports, e.g. ``"12.4"``: CUDA runtimes of a
    newer major do not run on it) and ``error`` (why not, or ``""``)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return {"loaded": False, "gpus": 0, "cuda_version": None, "error": "no NVIDIA driver"}
    version, count = ctypes.c_int(0), ctypes.c_int(0)
    cuda_version = None
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
        cuda_version = f"{version.value // 1000}.{version.value % 1000 // 10}"  # 12040 -> "12.4"
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return {"loaded": True, "gpus": 0, "cuda_version": cuda_version,
                "error": "the NVIDIA driver reports no usable GPU"}
    return {"loaded": True, "gpus": count.value, "cuda_version": cuda_version, "error": ""}


def preload() -> list[str]:
    """``onnxruntime.preload_dlls()`` (onnxruntime >= 1.21; a no-op before): load the CUDA and cuDNN libraries
    from the ``nvidia-*`` wheels (or the default search path) so the CUDA provider finds them without torch
    having been imported first. Returns the lines it printed about libraries that failed to load (it prints
    to stdout, which is ``--json`` output, so the output is captured)."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return []
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001 - e.g. an unusual layout; the provider check below decides
        return [f"preload_dlls failed: {exc}"]
    return [line.strip() for line in out.getvalue().splitlines() if line.startswith("Failed to load")]


@functools.lru_cache(maxsize=1)
def cuda_usable() -> tuple[bool, str]:
    """Whether onnxruntime's CUDA provider can run here, and why not (``"no NVIDIA driver"``, ...).

    Checked once per process (see the module docstring for the steps). Loading the provider library with
    the dynamic loader after :func:`preload` is what onnxruntime does when a session asks for CUDA; its
    error names the first missing library.
    """
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    found = driver()
    if found["error"]:
        return False, found["error"]
    failed = preload()
    error = provider_library_error()
    if error:
        major = (onnxruntime_info()["cuda_version"] or "?").split(".")[0]
        hint = f"; preload_dlls: {'; '.join(failed)}" if failed else ""
        return False, (f"the CUDA provider library does not load: {error} (onnxruntime-gpu needs the CUDA {major} "
                       f"and cuDNN 9 libraries: pip install 'onnxruntime-gpu[cuda,cudnn]'{hint})")
    return True, ""


def provider_library_error() -> str:
    """Load onnxruntime's CUDA provider library (``capi/libonnxruntime_providers_cuda.so``) as a session
    asking for CUDA would, then cuDNN 9 (``libcudnn.so.9``, which the provider opens when it starts);
    ``""`` when they load (or the provider is not there), else the first library the dynamic loader
    could not find, e.g. ``"libcublasLt.so.13 not found"`` (another load error is logged and ignored: the
    session then decides). Call :func:`preload` first to count the ``nvidia-*`` wheels' libraries."""
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    library, shared = capi / "libonnxruntime_providers_cuda.so", capi / "libonnxruntime_providers_shared.so"
    if not library.is_file():
        return ""
    try:
        if shared.is_file():  # defines Provider_GetHost for the provider; onnxruntime loads it global first too
            ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(library))
        ctypes.CDLL("libcudnn.so.9")  # loaded by the provider when it starts, not a link-time dependency
    except OSError as exc:
        name, sep, _ = str(exc).partition(": cannot open shared object file")
        if sep:
            return f"{name.strip()} not found"
        # anything else (e.g. a symbol) is this check's to get wrong: let the session try, and report its fallback
        log.debug("loading %s: %s", library, exc)
    return ""


def usable_providers(choice: str = "auto") -> list[str]:
    """Providers to request, best first. Raises ConfigError when a forced provider cannot run here."""
    if choice not in ("auto", *PROVIDERS):
        raise ConfigError(f"unknown provider {choice!r}; use auto, cuda or cpu")
    if choice == "cpu":
        return [CPU]
    ok, why = cuda_usable()
    if choice == "cuda" and not ok:
        raise ConfigError(f"the CUDA execution provider cannot run here: {why}; use --provider cpu")
    return [CUDA, CPU] if ok else [CPU]


def session_providers(providers: list[str]) -> list[Any]:
    """``providers`` as an onnxruntime session's ``providers=`` argument takes them: CUDA with :data:`CUDA_OPTIONS`."""
    return [(p, dict(CUDA_OPTIONS)) if p == CUDA else p for p in providers]
