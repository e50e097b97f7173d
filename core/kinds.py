"""Model kinds: how a run fits, and export rebuilds, a model that the epoch loop does not train.

``ModelSpec.fit`` names a model's kind. ``"epochs"`` (torch modules) is the trainer's own path in
:mod:`trainforge.run`. Any other kind (``"estimator"``: scikit-learn, see :mod:`trainforge.estimators`)
implements :class:`ModelKind` and registers itself here. The run and the exporter look a kind up by name
instead of importing it, so the wings below a kind never import it (the layering in the README).
Built-in kinds are listed by module path and imported on first use, like the built-in plugins.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from trainforge.errors import ConfigError

#: kind name -> module that registers it when imported
BUILTIN_KINDS = {"estimator": "trainforge.estimators.kind"}

_KINDS: dict[str, ModelKind] = {}


class ModelKind(Protocol):
    """What a model kind does in place of the epoch loop."""

    name: str

    def fit_and_log(self, cfg: dict[str, Any], bundle: Any, run_id: str, experiment_id: str, workdir: Path, *,
                    export: bool = True) -> Any:
        """Fit on ``bundle.train``, log the run like a torch run and export it; return a ``TrainResult``."""

    def export_run(self, run_id: str, output: str | Path | None = None, *, part: str | None = None,
                   log_to_run: bool = False) -> Any:
        """Re-export run ``run_id``'s model from its artifacts; return an ``ExportReport``."""


def register_kind(kind: ModelKind) -> None:
    """Make ``kind`` available under ``kind.name`` (a later registration replaces an earlier one)."""
    _KINDS[kind.name] = kind


def get_kind(name: str) -> ModelKind:
    """The registered kind ``name``, importing a built-in one on first use. Raises :class:`ConfigError`."""
    if name not in _KINDS and name in BUILTIN_KINDS:
        importlib.import_module(BUILTIN_KINDS[name])
    if name not in _KINDS:
        known = ", ".join(sorted({*_KINDS, *BUILTIN_KINDS, "epochs"}))
        raise ConfigError(f"unknown model kind {name!r}; known kinds: {known}")
    return _KINDS[name]
