"""Built-in learning-rate schedulers (``torch.optim.lr_scheduler``), stepped once per epoch."""

from __future__ import annotations

import trainforge


def build_none(optimizer, epochs):
    """A constant learning rate."""
    return None


def build_step(optimizer, epochs, step_size=10, gamma=0.1):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (``StepLR``)."""
    from torch.optim.lr_scheduler import StepLR

    return StepLR(optimizer, step_size=int(step_size), gamma=float(gamma))


def build_cosine(optimizer, epochs, eta_min=0.0):
    """Cosine annealing from the initial rate to ``eta_min`` over all epochs (Loshchilov & Hutter 2017)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR

    return CosineAnnealingLR(optimizer, T_max=int(epochs), eta_min=float(eta_min))


def build_plateau(optimizer, epochs, factor=0.1, patience=5, min_lr=0.0, mode="min"):
    """Multiply the rate by ``factor`` after ``patience`` epochs without improvement of the monitored metric."""
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return ReduceLROnPlateau(optimizer, mode=mode, factor=float(factor), patience=int(patience),
                             min_lr=float(min_lr))


@trainforge.hookimpl
def register_schedulers(register):
    register(trainforge.SchedulerSpec(name="none", description="Constant learning rate", build=build_none))
    register(trainforge.SchedulerSpec(
        name="step", description="StepLR: lr *= gamma every step_size epochs", build=build_step,
        defaults={"step_size": 10, "gamma": 0.1}))
    register(trainforge.SchedulerSpec(
        name="cosine", description="Cosine annealing to eta_min over the epochs", build=build_cosine,
        defaults={"eta_min": 0.0}))
    register(trainforge.SchedulerSpec(
        name="plateau", description="ReduceLROnPlateau on the monitored validation metric",
        build=build_plateau, needs_metric=True,
        defaults={"factor": 0.1, "patience": 5, "min_lr": 0.0}))
