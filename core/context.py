"""What a callback builder is told about the fit it joins."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - types only
    from .data import DataMeta
    from .tasks import Task


@dataclass
class TrainContext:
    """Passed to ``CallbackSpec.build``.

    - ``config``: the resolved config tree (see :mod:`trainforge.config`).
    - ``meta``: the data's metadata (task, input shape, classes, split sizes).
    - ``run_id``: the MLflow run the fit logs to, or ``None`` when tracking is off.
    - ``workdir``: a local folder for checkpoints and plots, uploaded as artifacts at the end.
    - ``quiet``: silence progress output.
    - ``extras``: free-form values from the caller (e.g. the Optuna trial when tuning).
    """

    config: dict[str, Any]
    meta: DataMeta
    task: Task
    workdir: Path
    run_id: str | None = None
    quiet: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
