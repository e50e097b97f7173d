"""``train(...)``: the main job as one Python call (the CLI's ``trainforge train`` calls exactly this).

Order: resolve the options and the config (:class:`~trainforge.run.options.RunOptions`) -> choose the
exporter -> seed -> load and check the data -> open the MLflow run -> log params -> build model, optimizer,
scheduler and callbacks from the registry -> fit -> restore the best epoch -> upload ``checkpoints/best.pt``
-> test metrics -> artifacts (config, plots) -> verified ONNX export -> with ``explain``, the explanation of
the exported file (:mod:`trainforge.explaining`) -> end the run FINISHED.
A failure marks the run FAILED, Ctrl-C or SIGTERM marks it KILLED; the best checkpoint reached so far is
uploaded either way.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from trainforge.contracts import TrainResult
from trainforge.errors import ConfigError
from trainforge.run.options import RunOptions, build_config
from trainforge.tracking import tags as tag

__all__ = ["RunOptions", "build_config", "load_data", "seed_everything", "train"]

log = logging.getLogger(__name__)


def load_data(cfg: dict[str, Any]) -> Any:
    """The :class:`~trainforge.training.data.DataBundle` of a resolved config, with targets for the task the
    model/dataset pair runs (:func:`trainforge.training.modeling.choose_task`; e.g. reconstruction for an
    autoencoder on digits). Raises :class:`ConfigError` when the pair shares no task."""
    from trainforge.training import data as data_mod
    from trainforge.training.modeling import choose_task

    task = choose_task(cfg["model"]["name"], cfg["dataset"]["name"])
    return data_mod.load(cfg["dataset"], cfg["trainer"], task=task)


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
    data: Any = None,
    callbacks: Iterable[Any] = (),
    extras: dict[str, Any] | None = None,
    on_start: Callable[[str], Any] | None = None,
    options: RunOptions | None = None,
    **settings: Any,
) -> TrainResult:
    """Train one model and track it in MLflow; see the module docstring for the steps.

    - ``config``/``overrides``/``settings``: :meth:`RunOptions.resolve <trainforge.run.options.RunOptions.resolve>`
      keywords (``tracking_uri``, ``experiment``, ``run_name``, ``parent_run_id``, ``tags``, ``export``,
      ``quiet``, ``resume``, ``export_worker``, ... and config keys like ``trainer__epochs=5``); a partial
      config is completed from the defaults. Or ``options``, already resolved (the CLI's).
    - ``data``: a pre-loaded :class:`~trainforge.training.data.DataBundle` to reuse (tuning loads it once).
    - ``callbacks``: extra :class:`~trainforge.contracts.Callback` objects (e.g. Optuna pruning); ``extras``
      reach the callback builders as ``TrainContext.extras``.
    - ``on_start``: called with the run id as soon as the run is open (the CLI prints it; tuning records it).
    - ``resume``: an MLflow run id; continue that run from its ``checkpoints/last.pt`` (model, optimizer,
      scheduler, epoch, RNG states) with its config, logging into the same run.
    - The run records this process in the tags ``trainforge.host``/``.pid``/``.pid_start``
      (:mod:`trainforge.tracking.stale`). SIGTERM (:mod:`trainforge.interrupts`) and Ctrl-C end it KILLED
      after uploading the best checkpoint; the ``KeyboardInterrupt`` re-raised carries ``run_id``.
    - Under torchrun (``WORLD_SIZE`` > 1) every rank trains a shard with DDP; only rank 0 tracks and
      exports (see :mod:`trainforge.training.distributed`).

    Raises :class:`TrainforgeError` subclasses for user errors: before any run is opened for bad options,
    config or data, otherwise after marking the run FAILED.
    """
    import dataclasses

    from trainforge.exporting import jobs
    from trainforge.training import distributed

    opts = options or RunOptions.resolve(config=config, overrides=tuple(overrides), **settings)
    if opts.folds:  # the cv wing sits above this one (trainforge.cv.runner.cross_validate)
        raise ConfigError("train() runs one model; K-fold cross-validation is trainforge.cv.runner.cross_validate"
                          "(config, k) or `trainforge train --cv K`")
    distributed.init_from_env(str(opts.config["trainer"]["device"]))
    main = distributed.is_main()
    if not main:  # other ranks train their shard; rank 0 tracks and exports
        opts = dataclasses.replace(opts, export=False, quiet=True)
    fork = opts.export and opts.export_worker and distributed.world()[1] == 1 and _fits_epochs(opts.config)
    exporter = jobs.choose(fork)  # before MLflow and the training start threads
    try:
        experiment_id, bundle = _prepare(opts, data, track=main)
        with tempfile.TemporaryDirectory(prefix="trainforge-") as tmp, contextlib.closing(exporter):
            if not main:
                return _run(opts, bundle, None, None, Path(tmp), [], extras or {}, exporter)
            with _opened(opts, experiment_id, bundle, on_start) as run_id:
                result = _run(opts, bundle, run_id, experiment_id, Path(tmp), list(callbacks), extras or {},
                              exporter)
                if opts.explain:  # inside the run: a failure or Ctrl-C here ends it FAILED / KILLED
                    result.explanation = _explain(opts, result)
                return result
    finally:
        exporter.close()


def _prepare(opts: RunOptions, data: Any, track: bool) -> tuple[str | None, Any]:
    """Before a run is opened: the store and experiment (``track``), the seeds, the data, and every check
    that can refuse the run (model/data pair, output shape, device, optimizer and scheduler values)."""
    cfg = opts.config
    experiment_id = None
    if track:
        from trainforge.tracking import store

        experiment_id = opts.experiment_id or store.setup(opts.tracking_uri, opts.experiment)
    seed_everything(int(cfg["trainer"]["seed"]))
    bundle = data if data is not None else load_data(cfg)
    if track:
        from trainforge.training.modeling import check_compatible, check_optimizer, preflight
        from trainforge.training.trainer import check_device

        check_compatible(cfg["model"], bundle.meta)  # fail before a run is opened
        preflight(cfg["model"], bundle.meta)  # e.g. a model whose output shape does not fit the task
        check_device(cfg["trainer"])
        if _fits_epochs(cfg):
            check_optimizer(cfg)  # torch's own checks of the optimizer and scheduler values
    return experiment_id, bundle


@contextlib.contextmanager
def _opened(opts: RunOptions, experiment_id: str, bundle: Any, on_start: Callable[[str], Any] | None) -> Any:
    """Open the MLflow run (or re-open the resumed one), yield its id, and end it FINISHED, FAILED or KILLED
    (:func:`trainforge.tracking.store.run_status`)."""
    import mlflow

    from trainforge.tracking import runlog, store
    from trainforge.tracking.stale import process_tags
    from trainforge.training import distributed

    cfg = opts.config
    system_metrics = runlog.system_metrics(cfg["trainer"])
    if opts.resume:  # the same run, status RUNNING again
        run = mlflow.start_run(run_id=opts.resume, log_system_metrics=system_metrics)
        mlflow.set_tags(process_tags())  # the process training it now
    else:
        run_tags = {tag.COMMAND: "train", tag.WORLD_SIZE: str(distributed.world()[1]),
                    **process_tags(), **_data_tags(bundle), **opts.tags}
        if distributed.describe():
            run_tags[tag.DISTRIBUTED] = distributed.describe()
        name = opts.run_name or f"{cfg['model']['name']}-{cfg['dataset']['name']}"
        run = mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=opts.parent_run_id,
                               nested=opts.parent_run_id is not None, tags=run_tags,
                               log_system_metrics=system_metrics)
    run_id = run.info.run_id
    try:
        if on_start is not None:
            on_start(run_id)
        with store.run_status(run_id):
            yield run_id
    except KeyboardInterrupt as exc:
        exc.run_id = run_id  # for the caller's message (the CLI prints how to resume)
        raise
    finally:
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == run_id:
            mlflow.end_run()


def _run(opts: RunOptions, bundle: Any, run_id: str | None, experiment_id: str | None, workdir: Path,
         callbacks: list[Any], extras: dict[str, Any], exporter: Any) -> TrainResult:
    """Fit, then, in this order: the best checkpoint uploaded, the export submitted, test metrics, artifacts,
    the callbacks closed, the export logged. ``run_id`` None: a DDP rank other than 0 (nothing tracked)."""
    from trainforge import manager
    from trainforge.exporting.logged import export_and_log, export_job
    from trainforge.tracking import runlog, store

    cfg, meta = opts.config, bundle.meta
    if run_id is not None and opts.resume_state is None:
        with store.deferred_interrupt():
            runlog.log_params(run_id, cfg, meta)
    kind = manager.get("model", cfg["model"]["name"]).fit
    if kind != "epochs":  # e.g. a scikit-learn estimator, fitted once: its kind runs it (trainforge.kinds)
        from trainforge.kinds import get_kind

        return get_kind(kind).fit_and_log(cfg, bundle, run_id, experiment_id, workdir, export=opts.export)

    trainer = _fit(opts, bundle, run_id, workdir, callbacks, extras)
    trainer.restore_best()  # the best epoch's weights are what test metrics, the checkpoint and the export use
    if run_id is None:
        test, _ = _test_metrics(trainer, bundle)
        return TrainResult(None, None, test, trainer.best_epoch, len(trainer.history), trainer.seconds, cfg)
    try:
        checkpoint = runlog.save_best_checkpoint(workdir, cfg, trainer, meta)
        with store.deferred_interrupt():  # first: a signal from here on loses no checkpoint
            runlog.upload_checkpoint(run_id, workdir)
        if opts.export:  # a forked exporter starts now, while this process logs
            exporter.submit(export_job(trainer.model, trainer.task, meta, bundle, workdir, run_id, cfg, checkpoint))
        test, test_state = _test_metrics(trainer, bundle)
        summary = {**test, "best_epoch": trainer.best_epoch, "epochs_run": len(trainer.history),
                   "train_seconds": trainer.seconds}
        with store.deferred_interrupt():  # see its docstring: no Ctrl-C inside a database write
            import mlflow

            mlflow.log_metrics(summary, run_id=run_id)
            runlog.log_artifacts(run_id, workdir, cfg, trainer, bundle, test_state=test_state)
    except BaseException:
        exporter.close()  # before the run's folder goes: a forked exporter may be writing model.onnx in it
        with contextlib.suppress(Exception):  # keep the original error
            trainer.close()
        raise
    trainer.close()  # e.g. the MLflow logger's last write of the epochs' metrics, in its thread until now
    result = TrainResult(run_id, experiment_id, test, trainer.best_epoch, len(trainer.history), trainer.seconds,
                         cfg, history=trainer.history, model=trainer.model)
    if opts.export:
        export_and_log(result, trainer.model, trainer.task, meta, bundle, workdir, exporter=exporter)
    return result


def _explain(opts: RunOptions, result: TrainResult) -> dict[str, Any]:
    """``--explain``: the exported file and the torch model (or estimator) explained on the first test rows,
    logged to the run (:func:`trainforge.explaining.api.explain_run`); the report as a dict."""
    from trainforge.errors import TrainforgeError
    from trainforge.explaining.api import RUN_ROWS, explain_run

    if result.onnx_path is None:
        raise TrainforgeError(f"run {result.run_id}: --explain found no exported ONNX file to explain")
    report = explain_run(result.run_id, result.onnx_path, rows=opts.explain_rows or RUN_ROWS,
                         tracking_uri=opts.tracking_uri, progress=not opts.quiet and not opts.json)
    return report.to_dict()


def _fit(opts: RunOptions, bundle: Any, run_id: str | None, workdir: Path, callbacks: list[Any],
         extras: dict[str, Any]) -> Any:
    """Build the model, optimizer(s), scheduler and callbacks from the registry, and fit; a fit that fails
    uploads the best checkpoint reached so far, then raises."""
    from trainforge import manager
    from trainforge.contracts import TrainContext
    from trainforge.tracking import runlog
    from trainforge.training.modeling import build_model, build_optimizer, build_scheduler
    from trainforge.training.tasks import get_task, metric_mode
    from trainforge.training.trainer import Trainer

    cfg, meta, tcfg = opts.config, bundle.meta, opts.config["trainer"]
    model = build_model(cfg["model"], meta)
    # One optimizer over all parameters, or the model's own (e.g. a GAN's two).
    optimizers = model.configure_optimizers(lambda params: build_optimizer(cfg["optimizer"], params))
    task = get_task(meta.task, meta=meta)
    mode = metric_mode(tcfg["monitor"], task) if tcfg["mode"] == "auto" else tcfg["mode"]
    scheduler, needs_metric = build_scheduler(cfg["scheduler"], optimizers[0], int(tcfg["epochs"]), mode)
    ctx = TrainContext(config=cfg, meta=meta, task=task, workdir=workdir, run_id=run_id, quiet=opts.quiet,
                       extras=extras)
    built = []
    for entry in sorted(manager.entries("callback"), key=lambda e: (e.spec.order, e.spec.name)):
        cb = entry.spec.build(ctx)
        if cb is not None:
            built.append(cb)
    trainer = Trainer(model, optimizers, task, tcfg, output_dim=meta.output_dim, callbacks=[*built, *callbacks],
                      scheduler=scheduler, scheduler_needs_metric=needs_metric)
    if opts.resume_state is not None:
        trainer.load_state_dict(opts.resume_state)
    try:
        trainer.fit(bundle)
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            trainer.close()
        if run_id is not None:
            runlog.upload_checkpoint(run_id, workdir)  # keep the best epoch reached so far
        raise
    return trainer


def _test_metrics(trainer: Any, bundle: Any) -> tuple[dict[str, float], Any]:
    """``test_*`` metrics of the best epoch and the task's metric state (batch by batch, as training reads)."""
    metrics, state = trainer.evaluate_with_state(bundle.test)
    return {f"test_{k}": v for k, v in metrics.items()}, state


def _fits_epochs(cfg: dict[str, Any]) -> bool:
    """Whether the model is a torch module trained by the epoch loop (not e.g. a scikit-learn kind)."""
    from trainforge import manager

    try:
        return manager.get("model", cfg["model"]["name"]).fit == "epochs"
    except Exception:  # noqa: BLE001 - an unknown model is reported where the run starts
        return False


def _data_tags(bundle: Any) -> dict[str, str]:
    """``trainforge.constant_features``: the training split's constant columns (warned about when loading);
    ``trainforge.dropped_columns``: a raw table's dropped identifier and constant columns."""
    from trainforge.training.data import TensorSplit, constant_features

    if not isinstance(bundle.train, TensorSplit):
        return {}
    names = constant_features(bundle.train.x.cpu().numpy(), bundle.meta.feature_names)
    tags = {tag.CONSTANT_FEATURES: ", ".join(names)[:5000]} if names else {}
    table = getattr(bundle.meta, "table", None)  # a raw table: columns dropped as identifiers or constants
    dropped = [f"{c.name} ({c.reason})" for c in (table.columns if table else []) if c.type == "drop"]
    return {**tags, tag.DROPPED_COLUMNS: ", ".join(dropped)[:5000]} if dropped else tags

