"""The tracking wing's built-in callbacks (per-epoch MLflow metrics, the resumable checkpoint), registered
through the same hook as any plugin's (listed in ``trainforge.manager.DEFAULT_PLUGINS``)."""

from __future__ import annotations

from trainforge.hookspecs import hookimpl
from trainforge.specs import CallbackSpec


def build_mlflow(ctx):
    from trainforge.tracking.logger import MLflowLogger

    return MLflowLogger(ctx.run_id) if ctx.run_id else None


def build_resume(ctx):
    from trainforge.tracking.logger import ResumeCheckpoint

    every = ctx.config["trainer"].get("resume_every_s")
    if not ctx.run_id or every is None or float(every) < 0:
        return None
    from trainforge.training.checkpoint import LAST

    staged = ctx.workdir / "resume" / LAST.rpartition("/")[2]
    return ResumeCheckpoint(ctx.run_id, staged, ctx.config, ctx.meta.to_dict(), every)


@hookimpl
def register_callbacks(register):
    register(CallbackSpec(name="mlflow", order=50, build=build_mlflow,
                          description="Log per-epoch metrics to the MLflow run (batched, written every second)"))
    register(CallbackSpec(name="resume-checkpoint", order=60, build=build_resume,
                          description="Upload checkpoints/last.pt for --resume every trainer.resume_every_s"))
