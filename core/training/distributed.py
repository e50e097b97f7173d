"""Multi-process training on torch.distributed (DDP): gloo on CPU, NCCL on GPU (from the chosen device).

``trainforge train --nproc N`` re-runs the same command under ``torch.distributed.run`` (torchrun), or
the user runs ``torchrun --nproc-per-node N -m trainforge.cli.main train ...`` (multi-node: torchrun's
``--nnodes``/``--rdzv-endpoint``). Each process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the
environment torchrun sets.

Semantics:
- ``trainer.batch_size`` stays the *global* batch: each rank takes ``batch_size // world_size`` rows
  per step, so the optimizer sees the same batch size, step count and learning rate as one process
  (no learning-rate scaling needed; if you raise the global batch instead, scale the learning rate
  linearly: Goyal et al. 2017, "Accurate, Large Minibatch SGD").
- In-memory splits are sharded by rank (``order[rank::world]``); metric statistics are all-reduced, so
  the reported metrics are those of the whole split.
- Only rank 0 logs to MLflow, writes checkpoints and exports; stop decisions (early stopping, pruning)
  are taken on rank 0 and broadcast.
- The backend follows ``trainer.device``: NCCL when it resolves to CUDA (each local rank on its own GPU,
  ``cuda:LOCAL_RANK``), gloo otherwise, also for ``--device cpu`` on a machine with GPUs. More local
  processes than visible GPUs is one :class:`ConfigError` (:func:`check_gpus`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any

import torch

from trainforge.errors import ConfigError


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def wants_cuda(device: str) -> bool:
    """Whether ``trainer.device`` (auto, cpu, cuda, cuda:N) means a GPU here: ``auto`` does when torch sees one."""
    device = str(device)
    return torch.cuda.is_available() if device == "auto" else device.startswith("cuda")


def backend_for(device: str) -> str:
    """The process-group backend for ``trainer.device``: ``nccl`` on GPUs, ``gloo`` on the CPU."""
    return "nccl" if wants_cuda(device) else "gloo"


def check_gpus(nproc: int, device: str) -> None:
    """Raise :class:`ConfigError` when ``nproc`` processes on this machine cannot each have a GPU of their own
    (NCCL needs one GPU per rank; ``set_device`` would fail with "invalid device ordinal")."""
    if nproc <= 1 or not wants_cuda(device):
        return
    visible = torch.cuda.device_count()
    if nproc > visible:
        fix = f"--nproc {visible} or --device cpu" if visible else "--device cpu"
        raise ConfigError(f"--nproc {nproc} with device {device!r} needs one GPU per process, but torch sees "
                          f"{visible}; use {fix}")


def init_from_env(device: str = "auto") -> bool:
    """Join the process group torchrun describes in the environment; ``False`` when not under torchrun.

    ``device`` is ``trainer.device``: the backend is :func:`backend_for` it. Raises :class:`ConfigError`
    when the local ranks outnumber the visible GPUs (:func:`check_gpus`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
            check_gpus(local_world, device)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend=backend)
    return True


def rank_device(device: torch.device) -> torch.device:
    """Under DDP a CUDA device becomes this rank's GPU, ``cuda:LOCAL_RANK``; other devices are unchanged."""
    if device.type != "cuda" or world()[1] == 1:
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def describe() -> str:
    """``"gloo, 2 processes"`` under torch.distributed, ``""`` outside it."""
    rank, size = world()
    return f"{torch.distributed.get_backend()}, {size} processes" if size > 1 else ""


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_state(state: dict[str, torch.Tensor]) -> None:
    """Sum every tensor of a task's metric state across ranks, in place (one collective per tensor)."""
    if world()[1] == 1:
        return
    for value in state.values():
        if isinstance(value, torch.Tensor):
            torch.distributed.all_reduce(value)


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def wrap(model: torch.nn.Module, device: torch.device) -> Any:
    """The model wrapped in DistributedDataParallel when running distributed, else unchanged."""
    if world()[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def launch(argv: list[str], nproc: int) -> int:
    """Run ``trainforge <argv>`` in ``nproc`` local processes under torchrun; returns its exit code.

    torchrun runs in its own session; SIGTERM (a scheduler) or SIGINT (Ctrl-C) to this process is forwarded
    to torchrun, whose agent sends it to the workers and SIGKILLs what is left after 30 s: the workers end
    their run KILLED with the best checkpoint, as one process does. The ``KeyboardInterrupt`` (or
    ``Terminated``) is re-raised once torchrun has ended, so no worker is left behind. stderr is relayed unchanged until then; after the
    signal, torchrun's own log lines and its ``SignalException`` traceback are dropped (:class:`_Relay`):
    the workers' lines say what happened.
    """
    import signal

    from trainforge import interrupts

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "trainforge.cli.main", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    # its own session: a terminal's Ctrl-C reaches this process only, which forwards one signal (the agent
    # sends it on to each worker once; a second SIGINT would interrupt the workers' clean-up)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent)
    relay = _Relay(proc.stderr.fileno())
    try:
        code = proc.wait()
        relay.join()
        return code
    except KeyboardInterrupt as exc:
        relay.filtering.set()
        forwarded = signal.SIGTERM if isinstance(exc, interrupts.Terminated) else signal.SIGINT
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in interrupts.STOPPING}
        try:
            if proc.poll() is None:
                proc.send_signal(forwarded)
            proc.wait()
            relay.join()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        exc.workers_reported = True  # rank 0 printed the run's line (how to resume); the CLI adds none
        raise


def _die_with_parent() -> None:
    """``preexec_fn``: SIGTERM for torchrun when this process dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``),
    so its agent stops the workers instead of leaving them running."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


class _Relay:
    """Copy torchrun's stderr (shared with its workers) to ours, in a thread.

    Bytes pass unchanged (progress bars keep their carriage returns) until :attr:`filtering` is set; then
    lines are copied one by one, minus torchrun's log lines (``W1201 10:39:20.466000 PID torch/...``) and
    any traceback ending in torch's ``SignalException`` (torchrun re-raises the signal it got).
    """

    def __init__(self, fd: int) -> None:
        import threading

        self.fd, self.filtering = fd, threading.Event()
        self._pending, self._traceback, self._ended = b"", [], False
        self._thread = threading.Thread(target=self._run, name="torchrun-stderr", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 30.0) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while chunk := os.read(self.fd, 65536):
            if not self.filtering.is_set():
                os.write(2, chunk)
                continue
            *lines, self._pending = (self._pending + chunk).split(b"\n")
            for line in lines:
                self._line(line + b"\n")
        if self._pending:
            self._line(self._pending)
        if self._traceback and b"SignalException" not in b"".join(self._traceback):
            os.write(2, b"".join(self._traceback))
        os.close(self.fd)

    def _line(self, line: bytes) -> None:
        import re

        if self._traceback:
            chained = line.strip() == b"" or line.startswith((b"During handling", b"The above exception", b"Traceback"))
            if line[:1] in (b" ", b"\t") or chained or not self._ended:
                self._traceback.append(line)
                self._ended = line[:1] not in (b" ", b"\t") and not chained  # the exception line
                return
            block, self._traceback = b"".join(self._traceback), []
            if b"SignalException" not in block:
                os.write(2, block)
        if line.startswith(b"Traceback (most recent call last):"):
            self._traceback, self._ended = [line], False
        elif not re.match(rb"[IWE]\d{4} [\d:.]+ +\d+ torch/distributed/", line):
            os.write(2, line)
