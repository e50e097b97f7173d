"""A run's checkpoints in the MLflow store: :func:`fetch` downloads and loads one (the files and their
content are described in :mod:`trainforge.training.checkpoint`)."""

from __future__ import annotations

from typing import Any

from trainforge.errors import TrainforgeError
from trainforge.training.checkpoint import BEST, LAST, load

__all__ = ["BEST", "LAST", "fetch"]


def fetch(run_id: str, artifact: str = BEST, *, missing: str | None = None) -> dict[str, Any]:
    """The checkpoint ``artifact`` (:data:`BEST` or :data:`LAST`) of MLflow run ``run_id``, loaded on the CPU.

    Uses the current tracking URI (:func:`trainforge.tracking.store.setup_uri`). Raises
    :class:`TrainforgeError` when the run or the file is missing (``missing`` replaces the message then,
    e.g. to say how the file gets written) or the file is unreadable.
    """
    from trainforge.tracking import store

    try:
        path = store.download(run_id, artifact)
    except TrainforgeError:
        if missing is None:
            raise
        raise TrainforgeError(missing) from None
    return load(path)
