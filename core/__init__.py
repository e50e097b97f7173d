"""trainforge: train, tune, track and ship PyTorch models from the command line.

Plugin authors need only this package root::

    import trainforge

    @trainforge.hookimpl
    def register_models(register):
        register(trainforge.ModelSpec(name="tiny", build=build, tasks={"classification"}))

Heavy parts (torch, mlflow, optuna) load only when a function that needs them is called.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import ConfigError, DataError, ExportError, PluginError, TrainforgeError
from .hookspecs import hookimpl, hookspec
from .specs import ArrayData, CallbackSpec, DatasetSpec, ModelSpec, OptimizerSpec, SchedulerSpec, TaskSpec

__version__ = "0.1.0"

# name -> module that defines it, imported on first access (PEP 562) to keep start-up light.
_LAZY = {
    "train": "api",
    "build_config": "api",
    "TrainResult": "api",
    "export": "exporter",
    "predict": "predictor",
    "Callback": "callbacks",
    "Trainer": "trainer",
    "Task": "tasks",
    "TrainContext": "context",
    "DataMeta": "data",
    "get_plugin_manager": "manager",
}

__all__ = [
    "ArrayData",
    "CallbackSpec",
    "ConfigError",
    "DataError",
    "DatasetSpec",
    "ExportError",
    "ModelSpec",
    "OptimizerSpec",
    "PluginError",
    "SchedulerSpec",
    "TaskSpec",
    "TrainforgeError",
    "__version__",
    "hookimpl",
    "hookspec",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainforge' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
