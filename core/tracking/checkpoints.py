"""A run's checkpoints in the MLflow store: :func:`fetch` downloads and loads one (the files and their
content are described in :mod:`trainforge.training.checkpoint`)."""

from __future__ import annotations

from typing import Any

from trainforge.errors import TrainforgeError
from trainforge.training.checkpoint import BEST, LAST, load

__all__ = ["BEST", "LAST", "fetch", "local_path"]


def local_path(run_id: str, artifact: str = BEST, *, missing: str | None = None) -> str:
    """A local path of the checkpoint file ``artifact`` (:data:`BEST` or :data:`LAST`) of MLflow run
    ``run_id``: the file itself in a local store, else a downloaded copy. Raises :class:`TrainforgeError`
    when the run or the file is missing (``missing`` replaces the message then)."""
    from trainforge.tracking import store

    try:
        return store.download(run_id, artifact)
    except TrainforgeError:
        if missing is None:
            raise
        raise TrainforgeError(missing) from None


def fetch(run_id: str, artifact: str = BEST, *, missing: str | None = None) -> dict[str, Any]:
    """The checkpoint ``artifact`` (:data:`BEST` or :data:`LAST`) of MLflow run ``run_id``, loaded on the CPU.

    Uses the current tracking URI (:func:`trainforge.tracking.store.setup_uri`). Raises
    :class:`TrainforgeError` when the run or the file is missing (``missing`` replaces the message then,
    e.g. to say how the file gets written) or the file is unreadable.
    """
    return load(local_path(run_id, artifact, missing=missing))
