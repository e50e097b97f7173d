"""Checkpoints: where they live, how they are written and read, and the model they hold.

Two files, both under a run's ``checkpoints/`` artifact folder (and the same relative paths in a run's
working directory), both dicts loadable with ``torch.load(path, weights_only=True)`` (no code runs):

- :data:`BEST` (``checkpoints/best.pt``): the best epoch, written by :func:`save`: ``format``,
  ``state_dict`` (the model's weights), ``config`` (the resolved config tree), ``meta`` (the data's
  :class:`~trainforge.contracts.DataMeta` as a dict), ``epoch`` and its ``metrics``.
- :data:`LAST` (``checkpoints/last.pt``): where ``train --resume`` continues, written by
  :func:`save_resume`: ``format``, ``trainer`` (the full trainer state: model, optimizer, scheduler,
  epoch, RNG), ``config`` and ``meta``.

:func:`rebuild` turns a best checkpoint back into the model, its task, data meta and config; fetching one
from an MLflow run is :func:`trainforge.tracking.checkpoints.fetch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from trainforge.errors import TrainforgeError

FOLDER = "checkpoints"
#: the best epoch's weights, config and data meta (artifact path, and path under a run's working directory)
BEST = f"{FOLDER}/best.pt"
#: the resumable trainer state (written every ``trainer.resume_every_s`` seconds)
LAST = f"{FOLDER}/last.pt"
FORMAT = 1


def _write(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` under a temporary name, then rename: a reader never sees half a file."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    tmp.replace(path)


def save(path: str | Path, state_dict: dict[str, Any], config: dict[str, Any], meta: dict[str, Any],
         epoch: int, metrics: dict[str, float]) -> None:
    """Atomically write a best checkpoint (see the module docstring): model weights ``state_dict``, the
    resolved ``config``, the data ``meta`` dict, the 1-based ``epoch`` and that epoch's ``metrics``."""
    _write(Path(path), {"state_dict": state_dict, "config": config, "meta": meta, "epoch": int(epoch),
                        "metrics": {k: float(v) for k, v in metrics.items()}})


def save_resume(path: str | Path, trainer_state: dict[str, Any], config: dict[str, Any],
                meta: dict[str, Any]) -> None:
    """Atomically write a resumable checkpoint: ``trainer_state`` is
    :meth:`~trainforge.training.trainer.Trainer.state_dict`."""
    _write(Path(path), {"trainer": trainer_state, "config": config, "meta": meta})


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs from the file), tensors on the CPU.

    Raises :class:`TrainforgeError` for a damaged, truncated or foreign file (torch's own message, which
    suggests ``weights_only=False``, i.e. running code from the file, is not passed on).
    """
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError (zip), EOFError ...
        raise TrainforgeError(f"{Path(path).name}: not a readable trainforge checkpoint (damaged or truncated: "
                              f"{type(exc).__name__}); retrain, or resume from another run") from None


class Rebuilt(NamedTuple):
    """What a best checkpoint holds, ready to use: ``model`` (the :class:`~trainforge.contracts.TrainforgeModel`
    with the checkpoint's weights, on the CPU, in eval mode), its ``task``, the data ``meta``
    (:class:`~trainforge.contracts.DataMeta`) and the resolved ``config``."""

    model: Any
    task: Any
    meta: Any
    config: dict[str, Any]


def rebuild(checkpoint: dict[str, Any] | str | Path) -> Rebuilt:
    """The model of a best checkpoint (a dict from :func:`load`, or a path), its task, data meta and config.

    The model is built from the checkpoint's ``config["model"]`` by its registered plugin, then gets the
    saved weights. Raises :class:`TrainforgeError` when the file is unreadable or holds no model (e.g. a
    :data:`LAST` file), and the model plugin's errors when it cannot be built.
    """
    from trainforge.contracts import DataMeta
    from trainforge.training.modeling import build_model
    from trainforge.training.tasks import get_task

    name = Path(checkpoint).name if isinstance(checkpoint, (str, Path)) else "checkpoint"
    if isinstance(checkpoint, (str, Path)):
        checkpoint = load(checkpoint)
    if not isinstance(checkpoint, dict) or not {"state_dict", "config", "meta"} <= checkpoint.keys():
        raise TrainforgeError(f"{name}: holds no model weights (a best checkpoint has state_dict, config and meta)")
    config, meta = checkpoint["config"], DataMeta.from_dict(checkpoint["meta"])
    model = build_model(config["model"], meta)
    model.load_state_dict(checkpoint["state_dict"])
    return Rebuilt(model.to("cpu").eval(), get_task(meta.task, meta=meta), meta, config)
