"""What an explanation leaves on its run: ``explain/`` artifacts and ``explain_<check>`` metrics.

Artifacts: ``importance.csv`` (feature, one column per method, and ``<method>_std`` for a spread),
``shap_values.npy`` ``(N, D)`` float64 with ``shap_background.npy`` (the masker's rows ``(B, *input_shape)``)
and ``shap_base_values.npy`` ``(N,)``, ``importance.png``, ``beeswarm.png``, ``image_grid.png`` (images:
a few correctly classified test images per class), ``over_time.png`` (sequences) and ``report.json``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.explaining import plots
from trainforge.explaining.methods import Attribution

#: images per class in ``image_grid.png``
PER_CLASS = 2


def write_artifacts(folder: Path, subject: Any, report: Any, done: dict[str, Attribution],
                    targets: np.ndarray | None, bg: np.ndarray) -> list[Path]:
    """Write the files of the module docstring into ``folder``; return their paths."""
    import pandas as pd

    names, written = subject.feature_names, []
    frame = pd.DataFrame({"feature": names})
    for method, a in done.items():
        frame[method] = a.importance
        if a.spread is not None:
            frame[f"{method}_std"] = a.spread
    frame.to_csv(folder / "importance.csv", index=False)
    written.append(folder / "importance.csv")
    shap_side = done.get("shap") or done.get("kernel-shap")
    if shap_side is not None:
        for name, array in (("shap_values", shap_side.values), ("shap_background", bg),
                            ("shap_base_values", shap_side.base)):
            np.save(folder / f"{name}.npy", array)
            written.append(folder / f"{name}.npy")
        written.append(plots.beeswarm(shap_side.values, subject.x.reshape(len(subject.x), -1), names,
                                      folder / "beeswarm.png", title=f"{shap_side.method} values "
                                      f"(background: {len(bg)} training rows)"))
    written.append(plots.importance_bars({k: a.importance for k, a in done.items()}, names,
                                         folder / "importance.png", {k: a.spread for k, a in done.items()}))
    maps = {k: a.values for k, a in done.items() if a.values is not None}
    if len(subject.input_shape) == 3 and maps and targets is not None:
        written.append(_grid(folder, subject, maps, targets))
    elif len(subject.input_shape) == 2 and maps:
        written.append(plots.over_time(maps, subject.input_shape, folder / "over_time.png"))
    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    written.append(folder / "report.json")
    return written


def _grid(folder: Path, subject: Any, maps: dict[str, np.ndarray], targets: np.ndarray) -> Path:
    """``image_grid.png``: :data:`PER_CLASS` test images of each class the model got right."""
    names = subject.meta.get("class_names") or [str(i) for i in range(int(targets.max()) + 1)]
    right = targets if subject.y is None else np.where(targets == subject.y.ravel(), targets, -1)
    picked = [i for c in range(len(names)) for i in np.flatnonzero(right == c)[:PER_CLASS]]
    shape = (-1, *subject.input_shape)
    return plots.image_grid(subject.x[picked], {k: v[picked].reshape(shape) for k, v in maps.items()},
                            [f"class {names[targets[i]]}" for i in picked], folder / "image_grid.png")


def log_explanation(subject: Any, report: Any, done: dict[str, Attribution], targets: np.ndarray | None,
                    bg: np.ndarray) -> list[str]:
    """Log the artifacts under ``explain/`` and the checks as ``explain_<name>`` metrics (plus
    ``explain_<method>_calls``) on ``subject.run_id``; return the artifact paths in the run."""
    import mlflow

    from trainforge.tracking import store as tracking

    with tempfile.TemporaryDirectory(prefix="trainforge-explain-") as tmp:
        files = write_artifacts(Path(tmp), subject, report, done, targets, bg)
        with tracking.deferred_interrupt():
            mlflow.log_artifacts(tmp, artifact_path="explain", run_id=subject.run_id)
            metrics = {f"explain_{k}": float(v) for k, v in report.checks.items() if v is not None}
            metrics.update({f"explain_{k.replace('-', '_')}_calls": float(v) for k, v in report.calls.items()})
            mlflow.log_metrics(metrics, run_id=subject.run_id)
    return [f"explain/{f.name}" for f in files]
