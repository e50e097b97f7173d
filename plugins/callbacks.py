"""Built-in trainer callbacks, registered through ``register_callbacks`` like any plugin's."""

from __future__ import annotations

import trainforge


def build_checkpoint(ctx):
    from trainforge.callbacks import Checkpoint

    return Checkpoint(ctx.workdir / "checkpoints" / "best.pt", ctx.config, ctx.meta.to_dict())


def build_early_stopping(ctx):
    from trainforge.callbacks import EarlyStopping

    patience = int(ctx.config["trainer"]["patience"])
    return EarlyStopping(patience) if patience > 0 else None


def build_mlflow(ctx):
    from trainforge.callbacks import MLflowLogger

    return MLflowLogger(ctx.run_id) if ctx.run_id else None


def build_progress(ctx):
    from trainforge.callbacks import ProgressBar

    return None if ctx.quiet else ProgressBar(int(ctx.config["trainer"]["epochs"]))


def build_resume(ctx):
    from trainforge.callbacks import ResumeCheckpoint

    every = ctx.config["trainer"].get("resume_every_s")
    if not ctx.run_id or every is None or float(every) < 0:
        return None
    return ResumeCheckpoint(ctx.run_id, ctx.workdir / "resume" / "last.pt", ctx.config, ctx.meta.to_dict(), every)


@trainforge.hookimpl
def register_callbacks(register):
    register(trainforge.CallbackSpec(name="checkpoint", order=10, build=build_checkpoint,
                                     description="Write the best checkpoint (at most every 10 s, and at the end)"))
    register(trainforge.CallbackSpec(name="early-stopping", order=20, build=build_early_stopping,
                                     description="Stop after trainer.patience epochs without improvement"))
    register(trainforge.CallbackSpec(name="mlflow", order=50, build=build_mlflow,
                                     description="Log per-epoch metrics to the MLflow run (batched every 10 s)"))
    register(trainforge.CallbackSpec(name="resume-checkpoint", order=60, build=build_resume,
                                     description="Upload checkpoints/last.pt for --resume every trainer.resume_every_s"))
    register(trainforge.CallbackSpec(name="progress", order=90, build=build_progress,
                                     description="tqdm progress bar with live metrics (off with --quiet)"))
