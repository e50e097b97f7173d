"""Built-in tasks, registered through ``register_tasks`` like any plugin's.

The task classes import torch, so each builder imports them when a run needs them; listing plugins
stays light.
"""

from __future__ import annotations

import trainforge


def build_classification(meta):
    from trainforge.tasks import Classification

    return Classification()


def build_regression(meta):
    from trainforge.tasks import Regression

    return Regression(getattr(meta, "target_std", None))


def build_forecasting(meta):
    from trainforge.plugins.tasklib import Forecasting

    return Forecasting(getattr(meta, "target_std", None))


def build_reconstruction(meta):
    from trainforge.plugins.tasklib import Reconstruction

    return Reconstruction(getattr(meta, "target_std", None))


def build_generation(meta):
    from trainforge.plugins.tasklib import Generation

    return Generation()


@trainforge.hookimpl
def register_tasks(register):
    register(trainforge.TaskSpec(
        name="classification", build=build_classification, target="label",
        description="Single-label classification: cross-entropy; accuracy, macro precision/recall/F1"))
    register(trainforge.TaskSpec(
        name="regression", build=build_regression, target="value",
        description="Regression: MSE on standardized targets; MSE, MAE, R2 in target units"))
    register(trainforge.TaskSpec(
        name="forecasting", build=build_forecasting, target="value",
        description="Multi-step forecasting of a series: MAE, RMSE, MASE vs the naive last-value forecast"))
    register(trainforge.TaskSpec(
        name="reconstruction", build=build_reconstruction, target="input",
        description="Reconstruct the input (autoencoders): MSE, MAE in input units; originals-vs-reconstructions grid"))
    register(trainforge.TaskSpec(
        name="generation", build=build_generation, target="none",
        description="Generate samples like the data (GANs; the model owns its training step); sample grids"))
