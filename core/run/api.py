"""``train(...)``: the main job as one Python call (the CLI's ``trainforge train`` calls exactly this).

Order: resolve the config -> seed -> load and split the data -> open the MLflow run -> log params ->
build model, optimizer, scheduler and callbacks from the registry -> fit -> restore the best epoch ->
test metrics -> artifacts (checkpoint, config, plots) -> verified ONNX export -> end the run FINISHED.
A failure marks the run FAILED, Ctrl-C marks it KILLED; the best checkpoint reached so far is uploaded
either way.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainforge import config as config_mod
from trainforge.contracts import TrainResult
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)


def build_config(
    config: dict[str, Any] | str | Path | None = None,
    overrides: Iterable[str] = (),
    **flags: Any,
) -> dict[str, Any]:
    """Resolve a config tree: spec defaults < ``config`` (dict or YAML path) < ``-p`` overrides < flags.

    ``flags`` are ``section__key=value`` (e.g. ``trainer__epochs=5``, ``model__name="cnn"``); ``None``
    values are ignored. Raises :class:`ConfigError` / :class:`PluginError` on bad input.
    """
    base = config_mod.load_file(config) if isinstance(config, (str, Path)) else (config or {})
    flag_tree: dict[str, dict[str, Any]] = {}
    for key, value in flags.items():
        if value is None:
            continue
        section, _, name = key.partition("__")
        flag_tree.setdefault(section, {})[name] = value
    return config_mod.resolve(config_mod.merge(base, config_mod.parse_overrides(list(overrides)), flag_tree))


def load_data(cfg: dict[str, Any]) -> Any:
    """The :class:`~trainforge.training.data.DataBundle` of a resolved config, with targets for the task the
    model/dataset pair runs (:func:`trainforge.training.modeling.choose_task`; e.g. reconstruction for an
    autoencoder on digits). Raises :class:`ConfigError` when the pair shares no task."""
    from trainforge.training import data as data_mod
    from trainforge.training.modeling import choose_task

    task = choose_task(cfg["model"]["name"], cfg["dataset"]["name"])
    return data_mod.load(cfg["dataset"], cfg["trainer"], task=task)


def check_launch(nproc: int, config: dict[str, Any] | str | Path | None = None, overrides: Iterable[str] = (),
                 **flags: Any) -> None:
    """Before ``trainforge train --nproc N`` starts N processes: raise :class:`ConfigError` when the resolved
    ``trainer.device`` is CUDA and this machine has fewer than N GPUs (one error line instead of N ranks
    failing). ``config``/``overrides``/``flags`` as in :func:`build_config`."""
    from trainforge.training.distributed import check_gpus

    device = flags.get("trainer__device")
    if device is None:
        device = build_config(config, overrides, **flags)["trainer"]["device"]
    check_gpus(nproc, str(device))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    config: dict[str, Any] | str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    tracking_uri: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    export: bool = True,
    quiet: bool = False,
    callbacks: Iterable[Any] = (),
    extras: dict[str, Any] | None = None,
    data: Any = None,
    resume: str | None = None,
    on_start: Any = None,
    export_worker: bool = False,
    **flags: Any,
) -> TrainResult:
    """Train one model and track it in MLflow; see the module docstring for the steps.

    - ``config``/``overrides``/``flags``: see :func:`build_config` (flags like ``trainer__epochs=5``).
    - ``parent_run_id``: nest the run under this MLflow run (tuning trials).
    - ``callbacks``: extra :class:`~trainforge.contracts.Callback` objects (e.g. Optuna pruning).
    - ``data``: a pre-loaded :class:`~trainforge.training.data.DataBundle` to reuse (tuning loads it once).
    - ``resume``: an MLflow run id; continue that run from its ``checkpoints/last.pt`` (model, optimizer,
      scheduler, epoch, RNG states) with its config, logging into the same run.
    - ``on_start``: called with the run id as soon as the run is open (the CLI prints it on stderr).
    - ``export_worker``: prepare and run the ONNX export in a forked process
      (:mod:`trainforge.exporting.worker`) while this one trains; only from a process that has not used
      torch yet (the CLI). Otherwise, or where fork is unavailable, the export runs in this process.
    - The run records this process in the tags ``trainforge.host``/``.pid``/``.pid_start``
      (:mod:`trainforge.tracking.stale`). SIGTERM (:mod:`trainforge.interrupts`) and Ctrl-C end it KILLED
      after uploading the best checkpoint; the ``KeyboardInterrupt`` re-raised carries ``run_id``.
    - Under torchrun (``WORLD_SIZE`` > 1) every rank trains a shard with DDP; only rank 0 tracks and
      exports (see :mod:`trainforge.training.distributed`).

    Raises :class:`TrainforgeError` subclasses for user errors; the run is then marked FAILED.
    """
    from trainforge.training import distributed

    resume_state = None
    if resume:
        cfg, resume_state = _resume_point(resume, tracking_uri)
        for key in ("device", "precision"):  # e.g. continue a CUDA run on the CPU
            if flags.get(f"trainer__{key}") is not None:
                cfg["trainer"][key] = str(flags[f"trainer__{key}"])
    else:
        cfg = config if isinstance(config, dict) and "trainer" in config and not overrides and not flags \
            else build_config(config, overrides, **flags)
    distributed.init_from_env(str(cfg["trainer"]["device"]))
    if not distributed.is_main():  # other ranks train their shard; rank 0 tracks and exports
        seed_everything(int(cfg["trainer"]["seed"]))
        bundle = data if data is not None else load_data(cfg)
        with tempfile.TemporaryDirectory(prefix="trainforge-") as tmp:
            return _run(cfg, bundle, None, None, Path(tmp), export=False, quiet=True, callbacks=[],
                        extras=extras or {}, resume_state=resume_state)
    worker = None
    if export and export_worker and distributed.world()[1] == 1 and _fits_epochs(cfg):
        from trainforge.exporting.worker import ExportWorker

        worker = ExportWorker.start()  # before MLflow and the training use threads
    try:
        return _open_and_run(cfg, data, tracking_uri, experiment, run_name, parent_run_id, tags, export, quiet,
                             callbacks, extras, resume, resume_state, on_start, worker)
    finally:
        if worker is not None:
            worker.close()


def _open_and_run(cfg: dict[str, Any], data: Any, tracking_uri: str | None, experiment: str | None,
                  run_name: str | None, parent_run_id: str | None, tags: dict[str, str] | None, export: bool,
                  quiet: bool, callbacks: Iterable[Any], extras: dict[str, Any] | None, resume: str | None,
                  resume_state: Any, on_start: Any, worker: Any) -> TrainResult:
    """:func:`train` on the main rank: set the store up, open the run, train, log, export."""
    import mlflow

    from trainforge.tracking import store as tracking
    from trainforge.training import distributed

    experiment_id = tracking.setup(tracking_uri, experiment)
    seed_everything(int(cfg["trainer"]["seed"]))
    bundle = data if data is not None else load_data(cfg)
    from trainforge.training.modeling import check_compatible, preflight

    check_compatible(cfg["model"], bundle.meta)  # fail before a run is opened
    preflight(cfg["model"], bundle.meta)  # e.g. a model whose output shape does not fit the task
    from trainforge.training.trainer import check_device

    check_device(cfg["trainer"])

    name = run_name or f"{cfg['model']['name']}-{cfg['dataset']['name']}"
    from trainforge.tracking import runlog
    from trainforge.tracking.stale import process_tags

    run_tags = {tag.COMMAND: "train", tag.WORLD_SIZE: str(distributed.world()[1]),
                **process_tags(), **_data_tags(bundle), **(tags or {})}
    if distributed.describe():
        run_tags[tag.DISTRIBUTED] = distributed.describe()
    system_metrics = runlog.system_metrics(cfg["trainer"])
    if resume:  # the same run, status RUNNING again
        run = mlflow.start_run(run_id=resume, log_system_metrics=system_metrics)
        experiment_id = run.info.experiment_id
        mlflow.set_tags(process_tags())  # the process training it now
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent_run_id,
                               nested=parent_run_id is not None, tags=run_tags,
                               log_system_metrics=system_metrics)
    run_id = run.info.run_id
    if on_start is not None:
        on_start(run_id)
    try:
        with tracking.run_status(run_id), tempfile.TemporaryDirectory(prefix="trainforge-") as tmp:
            return _run(cfg, bundle, run_id, experiment_id, Path(tmp), export=export, quiet=quiet,
                        callbacks=list(callbacks), extras=extras or {}, resume_state=resume_state, worker=worker)
    except KeyboardInterrupt as exc:
        exc.run_id = run_id  # for the caller's message (the CLI prints how to resume)
        raise
    finally:
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
            mlflow.end_run()


def _run(
    cfg: dict[str, Any], bundle: Any, run_id: str, experiment_id: str, workdir: Path, *,
    export: bool, quiet: bool, callbacks: list[Any], extras: dict[str, Any], resume_state: Any = None,
    worker: Any = None,
) -> TrainResult:
    import mlflow

    from trainforge import manager
    from trainforge.contracts import TrainContext
    from trainforge.exporting.logged import export_and_log
    from trainforge.tracking import runlog as reporting
    from trainforge.tracking import store as tracking
    from trainforge.training.modeling import build_model, build_optimizer, build_scheduler
    from trainforge.training.tasks import get_task, metric_mode
    from trainforge.training.trainer import Trainer

    meta, tcfg = bundle.meta, cfg["trainer"]
    if run_id is not None and resume_state is None:
        with tracking.deferred_interrupt():
            reporting.log_params(run_id, cfg, meta)
    kind = manager.get("model", cfg["model"]["name"]).fit
    if kind != "epochs":  # e.g. a scikit-learn estimator, fitted once: its kind runs it (trainforge.kinds)
        from trainforge.kinds import get_kind

        return get_kind(kind).fit_and_log(cfg, bundle, run_id, experiment_id, workdir, export=export)

    model = build_model(cfg["model"], meta)
    # One optimizer over all parameters, or the model's own (e.g. a GAN's two).
    optimizers = model.configure_optimizers(lambda params: build_optimizer(cfg["optimizer"], params))
    optimizer = optimizers[0]
    task = get_task(meta.task, meta=meta)
    mode = metric_mode(tcfg["monitor"], task) if tcfg["mode"] == "auto" else tcfg["mode"]
    scheduler, needs_metric = build_scheduler(cfg["scheduler"], optimizer, int(tcfg["epochs"]), mode)
    ctx = TrainContext(config=cfg, meta=meta, task=task, workdir=workdir, run_id=run_id, quiet=quiet, extras=extras)
    built = []
    for entry in sorted(manager.entries("callback"), key=lambda e: (e.spec.order, e.spec.name)):
        cb = entry.spec.build(ctx)
        if cb is not None:
            built.append(cb)
    trainer = Trainer(model, optimizers, task, tcfg, output_dim=meta.output_dim, callbacks=[*built, *callbacks],
                      scheduler=scheduler, scheduler_needs_metric=needs_metric)
    if resume_state is not None:
        trainer.load_state_dict(resume_state)
    try:
        trainer.fit(bundle)
    except BaseException:
        if run_id is not None:
            reporting.upload_checkpoint(run_id, workdir)  # keep the best epoch reached so far
        raise

    # The best epoch's weights are what test metrics, the checkpoint and the export use.
    trainer.restore_best()
    saved = False
    if worker is not None and export and run_id is not None:  # it exports while this process logs
        from trainforge.exporting.logged import submit_export

        ckpt = reporting.save_best_checkpoint(workdir, cfg, trainer, meta)
        worker, saved = submit_export(worker, ckpt, model, bundle, workdir, run_id, cfg), True
    try:  # meanwhile the MLflow logger writes the last epochs' metrics in the background
        metrics, test_state = trainer.evaluate_with_state(bundle.test)  # batch by batch, as training reads
        test = {f"test_{k}": v for k, v in metrics.items()}
        if run_id is None:  # a DDP rank other than 0: nothing to log or export
            return TrainResult(None, None, test, trainer.best_epoch, len(trainer.history), trainer.seconds, cfg)
        summary = {**test, "best_epoch": trainer.best_epoch, "epochs_run": len(trainer.history),
                   "train_seconds": trainer.seconds}
        with tracking.deferred_interrupt():  # see its docstring: no Ctrl-C inside a database write
            mlflow.log_metrics(summary, run_id=run_id)
            reporting.log_artifacts(run_id, workdir, cfg, trainer, bundle, test_state=test_state,
                                    checkpoint_saved=saved)
    except BaseException:
        if worker is not None:  # before the run's folder goes: the worker may be writing model.onnx in it
            worker.close()
        with contextlib.suppress(Exception):  # keep the original error
            _wait_for_writers(trainer)
        raise
    _wait_for_writers(trainer)

    result = TrainResult(run_id, experiment_id, test, trainer.best_epoch, len(trainer.history), trainer.seconds,
                         cfg, history=trainer.history, model=model)
    if export:
        export_and_log(result, model, task, meta, bundle, workdir, worker=worker)
    return result


def _fits_epochs(cfg: dict[str, Any]) -> bool:
    """Whether the model is a torch module trained by the epoch loop (not e.g. a scikit-learn kind)."""
    from trainforge import manager

    try:
        return manager.get("model", cfg["model"]["name"]).fit == "epochs"
    except Exception:  # noqa: BLE001 - an unknown model is reported where the run starts
        return False


def _data_tags(bundle: Any) -> dict[str, str]:
    """``trainforge.constant_features``: the training split's constant columns (warned about when loading)."""
    from trainforge.training.data import TensorSplit, constant_features

    if not isinstance(bundle.train, TensorSplit):
        return {}
    names = constant_features(bundle.train.x.cpu().numpy(), bundle.meta.feature_names)
    return {tag.CONSTANT_FEATURES: ", ".join(names)[:5000]} if names else {}


def _wait_for_writers(trainer: Any) -> None:
    """Join the MLflow logger's background write of the last epochs (re-raising its error)."""
    from trainforge.tracking.logger import MLflowLogger

    for cb in trainer.callbacks:
        if isinstance(cb, MLflowLogger):
            cb.wait()


def _resume_point(run_id: str, tracking_uri: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config and trainer state in run ``run_id``'s ``checkpoints/last.pt``."""
    from trainforge.errors import TrainforgeError
    from trainforge.tracking import checkpoints
    from trainforge.tracking import store as tracking

    tracking.setup_uri(tracking_uri)
    run = tracking.get_run(run_id)
    if run.info.status == "FINISHED":
        raise TrainforgeError(f"run {run_id} already FINISHED; nothing to resume")
    saved = checkpoints.fetch(run_id, checkpoints.LAST, missing=(
        f"run {run_id} has no resumable checkpoint ({checkpoints.LAST}); they are written every "
        "trainer.resume_every_s seconds"))
    return saved["config"], saved["trainer"]
