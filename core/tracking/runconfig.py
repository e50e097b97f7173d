"""The resolved config a finished or stopped run was trained with, read back from the store.

The checkpoint is the source (``checkpoints/best.pt``, else ``checkpoints/last.pt``: the config travels
inside it, which is what ``trainforge export`` and ``--resume`` read); a run without one (a scikit-learn
estimator) is read from its ``config.yaml``. A damaged file is never replaced by defaults: a config without
its dataset or trainer section would re-create another dataset's rows or another split.
"""

from __future__ import annotations

from typing import Any

from trainforge.errors import TrainforgeError
from trainforge.training.checkpoint import BEST, LAST, load

CHECKPOINTS = (BEST, LAST)


def run_config(run_id: str) -> dict[str, Any]:
    """The config tree of run ``run_id`` (sections ``model``, ``dataset``, ``trainer``, ...), from its
    checkpoint or, without one, its ``config.yaml`` (see the module docstring).

    Raises :class:`TrainforgeError` (one line naming the run and the file) when the run is unknown, or when
    neither file gives a config with a ``dataset`` (with its ``name``) and a ``trainer`` section.
    """
    from trainforge.tracking import store

    run = store.get_run(run_id)
    problems = []
    for artifact in CHECKPOINTS:
        try:
            path = store.download(run_id, artifact)
        except TrainforgeError:
            continue
        try:
            return _checked(load(path).get("config"), artifact)
        except TrainforgeError as exc:
            problems.append(str(exc))
    try:
        path = store.download(run_id, "config.yaml")
    except TrainforgeError:
        problems.append("no config.yaml")
    else:
        from trainforge import config as config_mod

        try:
            return _checked(config_mod.load_file(path), "config.yaml")
        except TrainforgeError as exc:
            problems.append(str(exc).replace(str(path), "config.yaml"))
    raise TrainforgeError(f"run {run.info.run_id}: cannot tell which data it was trained on: {'; '.join(problems)}")


def _checked(cfg: Any, name: str) -> dict[str, Any]:
    if not isinstance(cfg, dict):
        raise TrainforgeError(f"{name}: holds no config")
    dataset, trainer = cfg.get("dataset"), cfg.get("trainer")
    if not isinstance(dataset, dict) or not dataset.get("name"):
        raise TrainforgeError(f"{name}: no dataset section with a name (damaged?)")
    if not isinstance(trainer, dict):
        raise TrainforgeError(f"{name}: no trainer section (damaged?)")
    return cfg
