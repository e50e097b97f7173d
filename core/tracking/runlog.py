"""What a training run writes to MLflow: params, tags, artifacts, and the ONNX model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trainforge import config as config_mod
from trainforge.errors import ConfigError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def log_params(run_id: str, cfg: dict[str, Any], meta: Any) -> None:
    """Every resolved hyperparameter (``section.key``), the data's shape and sizes, and plugin origins, in one
    ``log_batch`` (MLflow chunks it at 100 params/tags): one store round trip, not one per tag."""
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    from trainforge import __version__, manager

    params = {k: _param_value(v) for k, v in config_mod.flatten(cfg).items()}
    params.update({
        "data.task": meta.task,
        "data.input_shape": json.dumps(list(meta.input_shape)),
        "data.output_dim": str(meta.output_dim),
        **{f"data.{split}_size": str(n) for split, n in meta.sizes.items()},
    })
    tags = {tag.VERSION: __version__, tag.TASK: meta.task}
    for section in config_mod.PLUGIN_SECTIONS:
        name = cfg[section]["name"]
        entry = manager.entry(section, name)
        tags[tag.named("plugin", section)] = f"{name} ({entry.distribution} {entry.version})".strip()
    MlflowClient().log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])


def upload_checkpoint(run_id: str, workdir: Path) -> None:
    """Upload ``checkpoints/`` if a checkpoint was written (also called when the fit fails)."""
    import mlflow

    from trainforge.training.checkpoint import FOLDER

    folder = workdir / FOLDER
    if folder.is_dir() and any(folder.iterdir()):
        try:
            mlflow.log_artifacts(str(folder), artifact_path=FOLDER, run_id=run_id)
        except Exception as exc:  # never hide the error that brought us here
            from trainforge.errors import environment_fault

            if (fault := environment_fault(exc)) is not None:  # read-only, full: the command's one line says it
                log.info("could not upload the checkpoint of run %s: %s", run_id, fault)
            else:
                log.exception("could not upload the checkpoint of run %s", run_id)


#: at most this many test rows of a streamed split reach ``Task.plots`` (a uniform random sample, in split order)
PLOT_ROWS = 20_000
#: and at most about this many bytes of them (rows, targets and outputs; e.g. a few hundred large images)
PLOT_BYTES = 64 * 2**20


class RowSample:
    """A uniform random sample without replacement of at most ``k`` rows of a stream of batches, in arrival
    order: each row draws a seeded uniform key and the ``k`` smallest keys stay ("bottom-k" sampling, as
    reservoir sampling; Efraimidis & Spirakis 2006 with equal weights). Memory: at most ``2 k`` rows."""

    def __init__(self, k: int, seed: int = 0) -> None:
        self.k, self.rng, self.seen = max(1, int(k)), np.random.default_rng(seed), 0
        self.keys = np.empty(0)
        self.parts: list[list[np.ndarray]] = []  # per column (x, y, outputs): kept rows in arrival order

    def add(self, *columns: np.ndarray) -> None:
        """Offer a batch: arrays with the same first axis ``(B, ...)``; kept rows are copied."""
        keys = self.rng.random(len(columns[0]))
        self.seen += len(keys)
        if len(self.keys) >= self.k:  # only rows under the current k-th smallest key can enter
            take = np.flatnonzero(keys < np.partition(self.keys, self.k - 1)[self.k - 1])
        else:
            take = np.arange(len(keys))
        if not len(take):
            return
        self.keys = np.concatenate([self.keys, keys[take]])
        self.parts = [[*old, np.asarray(c)[take]] for old, c in zip(self.parts or [[] for _ in columns],
                                                                     columns, strict=True)]
        if len(self.keys) >= 2 * self.k:
            self._shrink()

    def _shrink(self) -> None:
        keep = np.sort(np.argpartition(self.keys, self.k - 1)[: self.k])  # the k smallest, in arrival order
        self.keys = self.keys[keep]
        self.parts = [[np.concatenate(p)[keep]] for p in self.parts]

    def arrays(self) -> list[np.ndarray]:
        """The sampled rows of each column, in arrival order."""
        if len(self.keys) > self.k:
            self._shrink()
        return [np.concatenate(p) for p in self.parts]


def collect_split(model: Any, split: Any, device: Any, batch_size: int = 1024, max_rows: int | None = None,
                  seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(x, y, outputs)`` of a split as numpy arrays: every row, or with ``max_rows`` a :class:`RowSample`
    of at most ``max_rows`` rows (and :data:`PLOT_BYTES`), in split order, seeded by ``seed``. A generator's
    outputs are ``len(x)`` samples from its ``example_input`` instead."""
    import torch

    from trainforge.training.data import batches

    model.eval()
    generative = getattr(model, "generative", False)
    xs, ys, outs = [], [], []
    sample = None
    with torch.inference_mode():
        for x, y in batches(split, batch_size):
            cols = [x.cpu().numpy(), y.cpu().numpy()]
            if not generative:
                cols.append(model(x.to(device)).float().cpu().numpy())
            if max_rows is None:
                for part, col in zip((xs, ys, outs), cols, strict=False):
                    part.append(col)
                continue
            if sample is None:  # rows of a few MB each (e.g. images) count against the byte budget too
                row_bytes = max(1, sum(c[:1].nbytes for c in cols))
                sample = RowSample(min(max_rows, max(1, PLOT_BYTES // (2 * row_bytes))), seed)
            sample.add(*cols)
        if sample is not None:
            arrays = sample.arrays()
            xs, ys, outs = [arrays[0]], [arrays[1]], arrays[2:]
            log.info("test plots drawn from a uniform sample of %d of %d streamed test rows", len(xs[0]),
                     sample.seen)
        x_all = np.concatenate(xs)
        if generative:
            outs = [model(model.example_input(len(x_all)).to(device)).float().cpu().numpy()]
    return x_all, np.concatenate(ys), np.concatenate(outs)


def save_best_checkpoint(workdir: Path, cfg: dict[str, Any], trainer: Any, meta: Any) -> Path:
    """Write the best epoch's weights, config and data meta to ``<workdir>/checkpoints/best.pt``."""
    from trainforge.training import checkpoint

    ckpt = workdir / checkpoint.BEST
    best = trainer.history[trainer.best_epoch - 1] if trainer.best_epoch else {}
    checkpoint.save(ckpt, trainer.best_state or trainer.model.state_dict(), cfg, meta.to_dict(),
                    trainer.best_epoch, best)
    return ckpt


def log_artifacts(run_id: str, workdir: Path, cfg: dict[str, Any], trainer: Any, bundle: Any,
                  test_state: dict[str, Any] | None = None) -> None:
    """Resolved config (YAML), data metadata, and unless ``trainer.plots`` is false the learning curves and the
    task's test plots (a confusion matrix, predicted vs actual, forecast vs actual, a reconstruction or sample
    grid). The best checkpoint is not
    among them: it is uploaded first, right after the fit (:func:`save_best_checkpoint`, :func:`upload_checkpoint`).

    ``test_state``: the task's metric state over the test split (:meth:`Trainer.evaluate_with_state`); a task
    whose ``state_plots`` draws from it (classification: the confusion counts) needs no test row. Other
    plots get every row of an in-memory test split, a bounded sample of a streamed one (:func:`collect_split`).
    """
    import mlflow

    from trainforge import plots

    meta = bundle.meta
    files = workdir / "run-files"  # one upload (one store round trip) for the run's top-level files
    files.mkdir(exist_ok=True)
    (files / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (files / "data_meta.json").write_text(json.dumps(meta.to_dict(), indent=1))
    if meta.report:  # a raw table: rows read, duplicates, test rows in train, per-column types and statistics
        (files / "data_report.json").write_text(json.dumps(meta.report, indent=1))
    mlflow.log_artifacts(str(files), run_id=run_id)

    if not cfg["trainer"].get("plots", True):  # e.g. a tuning trial (trainforge.tuning.settings.TRIAL_TRAINER)
        return
    plot_dir = workdir / "plots"
    plot_dir.mkdir(exist_ok=True)
    plots.learning_curves(trainer.history, plot_dir / "learning_curves.png", meta.task,
                          main=getattr(trainer.task, "main_metric", None))
    if trainer.task.state_plots(plot_dir, test_state, meta) is None:
        from trainforge.training.data import TensorSplit

        streamed = not isinstance(bundle.test, TensorSplit)  # larger than memory: a bounded sample
        x, y_true, out = collect_split(trainer.model, bundle.test, trainer.device,
                                       int(cfg["trainer"]["eval_batch_size"]),
                                       max_rows=PLOT_ROWS if streamed else None, seed=int(cfg["trainer"]["seed"]))
        if streamed and len(x) < int(meta.sizes.get("test", 0)):
            from mlflow.tracking import MlflowClient

            MlflowClient().set_tag(run_id, tag.PLOT_ROWS,
                                   f"{len(x)} of {meta.sizes['test']} test rows (uniform sample)")
        trainer.task.plots(plot_dir, x, y_true, out, meta)
    mlflow.log_artifacts(str(plot_dir), artifact_path="plots", run_id=run_id)


def system_metrics(trainer: dict[str, Any]) -> bool:
    """Whether the run logs MLflow's system metrics (``trainer.system_metrics``; ``mlflow.start_run(
    log_system_metrics=True)``): ``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``,
    ... and per GPU ``system/gpu_0_utilization_percentage``, ``system/gpu_0_memory_usage_megabytes``, one step per
    sample. MLflow samples every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (default 10).

    Raises :class:`ConfigError` when psutil is missing; logs a warning when a GPU is visible but nvidia-ml-py
    (``pynvml``, MLflow's GPU monitor) is not installed. Both come with ``pip install 'trainforge[gpu]'``.
    """
    import importlib.util

    if not trainer.get("system_metrics", False):
        return False
    if importlib.util.find_spec("psutil") is None:
        raise ConfigError("trainer.system_metrics needs psutil: pip install 'trainforge[gpu]'")
    if importlib.util.find_spec("pynvml") is None:
        import torch

        if torch.cuda.is_available():
            log.warning("trainer.system_metrics: no GPU metrics without nvidia-ml-py (pip install 'trainforge[gpu]')")
    return True
