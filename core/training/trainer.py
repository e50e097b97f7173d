"""The training loop.

One function, ordered sections. Everything optional (early stopping, checkpoints, tracking, pruning,
progress) is a callback; the loop only trains, evaluates, tracks the best epoch and steps the
learning-rate schedule.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms.join import Join

from trainforge.contracts import Callback, Task
from trainforge.errors import ConfigError, TrainforgeError
from trainforge.training import distributed
from trainforge.training.data import DataBundle, TensorSplit, batches
from trainforge.training.tasks import metric_mode

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``. Raises ConfigError for unusable devices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but torch sees no CUDA GPU; use --device cpu")
    return distributed.rank_device(device)


def check_device(config: dict[str, Any]) -> torch.device:
    """The device for ``config`` (the trainer section); ConfigError when it or its precision cannot run here."""
    device = resolve_device(str(config["device"]))
    if str(config["precision"]) == "16-mixed" and device.type != "cuda":
        raise ConfigError("precision 16-mixed needs a CUDA device (a GradScaler); use bf16-mixed on CPU")
    return device


class Trainer:
    """Fit a model with an optimizer on a :class:`DataBundle` for a :class:`Task`.

    ``config`` is the ``trainer`` section of the resolved config (epochs, batch_size, precision, ...).
    ``optimizer`` may be a list (a model that owns its step, e.g. a GAN's two optimizers); the scheduler
    steps the first. A model with ``has_custom_step`` (see :class:`~trainforge.training.modeling.TrainforgeModel`)
    runs ``training_step`` / ``validation_step`` instead of the task's loss; their returned scalars,
    averaged over the epoch, are its metrics. After :meth:`fit`: ``history`` (one metrics dict per epoch), ``best_epoch``, ``best_value`` and
    ``best_state`` (CPU copy of the best weights by ``monitor``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer],
        task: Task,
        config: dict[str, Any],
        *,
        output_dim: int,
        callbacks: Iterable[Callback] = (),
        scheduler: Any = None,
        scheduler_needs_metric: bool = False,
    ) -> None:
        self.optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
        self.model, self.optimizer, self.task, self.config = model, self.optimizers[0], task, config
        self.custom_step = bool(getattr(model, "has_custom_step", False))
        self.output_dim = output_dim
        self.callbacks = list(callbacks)
        self.scheduler, self.scheduler_needs_metric = scheduler, scheduler_needs_metric
        self.device = check_device(config)
        self.precision = str(config["precision"])
        self.monitor = str(config["monitor"])
        mode = config.get("mode", "auto")
        self.mode = metric_mode(self.monitor, task) if mode == "auto" else mode
        self.min_delta = float(config.get("min_delta", 0.0))
        tie_break = config.get("tie_break", "val_loss")
        self.tie_break = None if tie_break in (None, "", "none", self.monitor) else str(tie_break)
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.best_epoch, self.best_value = 0, math.inf if self.mode == "min" else -math.inf
        self.best_state: dict[str, torch.Tensor] = {}
        self.epochs_without_improvement = 0
        self.should_stop = self.stopped_early = False
        #: shuffles the training split; its state is part of a resumable checkpoint
        self.generator = torch.Generator().manual_seed(int(config["seed"]))
        #: loss scaling for float16 autocast (CUDA only, see check_device); its state is resumable too
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "16-mixed" else None
        self.seconds = 0.0

    # -- helpers -------------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def _improved(self, value: float, metrics: dict[str, float]) -> bool:
        """Better than the best epoch by more than ``min_delta``; or, when ``tie_break`` is set, exactly equal
        with a lower ``tie_break`` value (e.g. the same val_accuracy at a lower val_loss)."""
        if self.mode == "min" and value < self.best_value - self.min_delta:
            return True
        if self.mode == "max" and value > self.best_value + self.min_delta:
            return True
        if self.tie_break is None or not self.best_epoch or value != self.best_value:
            return False
        if self.tie_break not in metrics:
            raise ConfigError(f"trainer.tie_break metric {self.tie_break!r} is not computed; choose one of "
                              f"{', '.join(metrics)} or none")
        return metrics[self.tie_break] < self.history[self.best_epoch - 1][self.tie_break]

    def _place(self, split: Any) -> Any:
        # Small in-memory splits live on the device for the whole fit: one copy, no per-batch transfer.
        return split.to(self.device) if isinstance(split, TensorSplit) else split

    def evaluate(self, split: Any) -> dict[str, float]:
        """Metrics of the current weights on a split (no gradients), keys without a prefix."""
        return self.evaluate_with_state(split)[0]

    @torch.inference_mode()
    def evaluate_with_state(self, split: Any) -> tuple[dict[str, float], dict[str, Any] | None]:
        """:meth:`evaluate`'s metrics and the task's metric state they came from (e.g. the confusion counts:
        see :meth:`~trainforge.contracts.Task.state_plots`), folded and summed over DDP ranks; the state is
        ``None`` for a model that owns its step. One pass over the split, batch by batch."""
        self.model.eval()
        state = {} if self.custom_step else self.task.new_state(self.output_dim, self.device)
        for x, y in batches(self._place(split), int(self.config["eval_batch_size"])):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.custom_step:
                _accumulate(state, self.model.validation_step((x, y)), len(x))
                continue
            with self._autocast():
                out = self.model(x)
            self.task.update(state, out.float(), y, inputs=x)
        return self._compute(state), None if self.custom_step else state

    def _compute(self, state: dict[str, Any]) -> dict[str, float]:
        # Under DDP every rank saw a shard: sum the statistics so metrics cover the whole split (after the
        # task folded what it buffered between host syncs into its tensors).
        if self.custom_step:
            return _average(state)
        self.task.fold(state)
        distributed.all_reduce_state(state)
        return self.task.compute(state)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, data: DataBundle) -> Trainer:
        cfg = self.config
        model, optimizer, task = self.model.to(self.device), self.optimizer, self.task
        train, val = self._place(data.train), self._place(data.val)
        generator = self.generator
        train_model = distributed.wrap(model, self.device)  # DDP under torchrun, else the model itself
        world_size = distributed.world()[1]
        batch_size = max(1, int(cfg["batch_size"]) // world_size)  # trainer.batch_size is the global batch
        scaler = self.scaler
        grad_clip = cfg.get("grad_clip")
        started = time.perf_counter()
        self._emit("on_fit_start")
        try:
            for epoch in range(self.epoch + 1, int(cfg["epochs"]) + 1):
                self.epoch = epoch
                # 1. One pass over the training split. The loss and the metric statistics stay on the
                #    device: no .item() per step, one host sync per epoch in task.compute().
                model.train()
                state = {} if self.custom_step else task.new_state(self.output_dim, self.device)
                join = Join([train_model]) if world_size > 1 else contextlib.nullcontext()  # uneven shards
                with join:
                    for x, y in batches(train, batch_size, shuffle=True, generator=generator):
                        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                        if self.custom_step:  # the model owns its step: backward, optimizer steps, metrics
                            _accumulate(state, model.training_step((x, y), self.optimizers), len(x))
                            continue
                        with self._autocast():
                            out = train_model(x)
                            loss = task.loss(out, y)
                        optimizer.zero_grad(set_to_none=True)
                        if scaler is not None:
                            scaler.scale(loss).backward()
                            scaler.unscale_(optimizer)
                        else:
                            loss.backward()
                        if grad_clip:
                            nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
                        if scaler is not None:
                            scaler.step(optimizer)
                            scaler.update()
                        else:
                            optimizer.step()
                        task.update(state, out.detach().float(), y, loss=loss.detach(), inputs=x)
                computed = self._compute(state)
                metrics = {f"train_{k}": v for k, v in computed.items()}
                if not math.isfinite(metrics.get("train_loss", math.nan)):
                    raise TrainforgeError(
                        f"training diverged: the training loss is {metrics['train_loss']} at epoch {epoch}; "
                        "lower the learning rate or set trainer.grad_clip"
                    )

                # 2. Validation, and the learning rate this epoch ran with.
                metrics.update({f"val_{k}": v for k, v in self.evaluate(val).items()})
                metrics["lr"] = float(optimizer.param_groups[0]["lr"])
                self.history.append(metrics)

                # 3. Best epoch by the monitored metric; its weights are what test and export use.
                if self.monitor not in metrics:
                    raise ConfigError(
                        f"monitored metric {self.monitor!r} is not computed; choose one of {', '.join(metrics)}"
                    )
                value = metrics[self.monitor]
                if self._improved(value, metrics):
                    self.best_value, self.best_epoch = value, epoch
                    self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    self.epochs_without_improvement = 0
                else:
                    self.epochs_without_improvement += 1

                # 4. Learning-rate schedule, once per epoch.
                if self.scheduler is not None:
                    self.scheduler.step(value) if self.scheduler_needs_metric else self.scheduler.step()

                # 5. Callbacks: logging, checkpoints, early stopping, pruning.
                self._emit("on_epoch_end", epoch, metrics)
                self.should_stop = distributed.broadcast_flag(self.should_stop, self.device)  # rank 0 decides
                if self.should_stop:
                    break
        except BaseException as exc:
            self.seconds = time.perf_counter() - started
            self._emit("on_exception", exc)
            raise
        self.seconds = time.perf_counter() - started
        self._emit("on_fit_end")
        return self

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this fit bit-for-bit (``torch.load(weights_only=True)``-safe):
        weights, optimizer(s) and scheduler state, epoch, best-epoch tracking, history and RNG states
        (CPU, the shuffling generator and, on a CUDA device, every GPU's: ``torch.cuda.get_rng_state_all``),
        and the GradScaler's state under 16-mixed precision (``None`` otherwise)."""
        cuda = self.device.type == "cuda"
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()},
            "optimizers": [o.state_dict() for o in self.optimizers],
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_value": float(self.best_value),
            "best_state": self.best_state,
            "epochs_without_improvement": self.epochs_without_improvement,
            "history": self.history,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": list(torch.cuda.get_rng_state_all()) if cuda else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the next :meth:`fit` starts at epoch ``state["epoch"] + 1``.

        The model moves to this trainer's device first: ``Optimizer.load_state_dict`` puts each state
        tensor (Adam's ``exp_avg``, ...) on the device of its parameter *as it is then*, so loading onto
        CPU parameters and moving the model afterwards would leave the optimizer state behind. The state
        may come from another device (``torch.load(map_location="cpu")`` of a CUDA run, or the reverse) and
        from checkpoints written before the CUDA RNG and GradScaler states were saved.
        """
        self.model.to(self.device)
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_epoch = int(state["epoch"]), int(state["best_epoch"])
        self.best_value, self.best_state = float(state["best_value"]), state["best_state"]
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
        self.history = list(state["history"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        cuda_rng = state.get("cuda_rng")
        if cuda_rng and self.device.type == "cuda":  # one state per GPU; a machine with fewer GPUs takes the first
            for index, rng in enumerate(cuda_rng[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(rng, index)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def flush(self) -> None:
        """Event ``on_flush``: every callback writes what it buffers now (e.g. before a resumable checkpoint
        is saved, so that the run never holds a checkpoint newer than its logged metrics)."""
        for cb in self.callbacks:
            if (handler := getattr(cb, "on_flush", None)) is not None:
                handler(self)

    def close(self) -> None:
        """Event ``on_close``, once the run's results are logged (or the run failed), before the run ends:
        every callback finishes what it runs in the background (joins its threads). All are closed; the first
        error raised is raised again (e.g. the metric writer's: an unreachable tracking server)."""
        error: BaseException | None = None
        for cb in self.callbacks:
            try:
                if (handler := getattr(cb, "on_close", None)) is not None:
                    handler(self)
            except BaseException as exc:  # noqa: BLE001 - the others are closed first
                error = error or exc
        if error is not None:
            raise error

    def restore_best(self) -> None:
        """Load the best epoch's weights into the model (no-op before the first epoch)."""
        if self.best_state:
            self.model.load_state_dict(self.best_state)


def _accumulate(state: dict[str, Any], values: dict[str, Any], n: int) -> None:
    """Add a custom step's scalars, weighted by the batch size ``n`` (kept on the device: no sync)."""
    for key, value in values.items():
        value = value.detach().double() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        state[key] = state.get(key, 0.0) + value * n
    state["_count"] = state.get("_count", 0) + n


def _average(state: dict[str, Any]) -> dict[str, float]:
    """Epoch means of a custom step's scalars (one host sync per value)."""
    n = max(int(state.pop("_count", 0)), 1)
    return {key: float(value) / n for key, value in state.items()}
