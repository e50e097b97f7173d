"""The training wing's built-in tasks and callbacks, registered through the same hooks as any plugin's
(listed in ``trainforge.manager.DEFAULT_PLUGINS``). Builders import the torch classes when a run needs them,
so ``trainforge plugins`` stays light."""

from __future__ import annotations

from trainforge.hookspecs import hookimpl
from trainforge.specs import CallbackSpec, TaskSpec


def build_classification(meta):
    from trainforge.training.tasks import Classification

    return Classification()


def build_regression(meta):
    from trainforge.training.tasks import Regression

    return Regression(getattr(meta, "target_std", None))


def build_forecasting(meta):
    from trainforge.training.tasklib import Forecasting

    return Forecasting(getattr(meta, "target_std", None))


def build_reconstruction(meta):
    from trainforge.training.tasklib import Reconstruction

    return Reconstruction(getattr(meta, "target_std", None))


def build_generation(meta):
    from trainforge.training.tasklib import Generation

    return Generation()


def build_checkpoint(ctx):
    from trainforge.training.callbacks import Checkpoint
    from trainforge.training.checkpoint import BEST

    return Checkpoint(ctx.workdir / BEST, ctx.config, ctx.meta.to_dict())


def build_early_stopping(ctx):
    from trainforge.training.callbacks import EarlyStopping

    patience = int(ctx.config["trainer"]["patience"])
    return EarlyStopping(patience) if patience > 0 else None


def build_progress(ctx):
    from trainforge.training.callbacks import ProgressBar

    return None if ctx.quiet else ProgressBar(int(ctx.config["trainer"]["epochs"]))


@hookimpl
def register_tasks(register):
    register(TaskSpec(
        name="classification", build=build_classification, target="label",
        description="Single-label classification: cross-entropy; accuracy, macro precision/recall/F1"))
    register(TaskSpec(
        name="regression", build=build_regression, target="value",
        description="Regression: MSE on standardized targets; MSE, MAE, R2 in target units"))
    register(TaskSpec(
        name="forecasting", build=build_forecasting, target="value",
        description="Multi-step forecasting of a series: MAE, RMSE, MASE vs the naive last-value forecast"))
    register(TaskSpec(
        name="reconstruction", build=build_reconstruction, target="input",
        description="Reconstruct the input (autoencoders): MSE, MAE in input units; originals-vs-reconstructions grid"))
    register(TaskSpec(
        name="generation", build=build_generation, target="none",
        description="Generate samples like the data (GANs; the model owns its training step); sample grids"))


@hookimpl
def register_callbacks(register):
    register(CallbackSpec(name="checkpoint", order=10, build=build_checkpoint,
                          description="Write the best checkpoint (at most every 10 s, and at the end)"))
    register(CallbackSpec(name="early-stopping", order=20, build=build_early_stopping,
                          description="Stop after trainer.patience epochs without improvement"))
    register(CallbackSpec(name="progress", order=90, build=build_progress,
                          description="tqdm progress bar with live metrics (off with --quiet)"))
