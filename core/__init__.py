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

from trainforge.errors import ConfigError, DataError, ExportError, PluginError, TrainforgeError
from trainforge.hookspecs import hookimpl, hookspec
from trainforge.specs import (
    STREAMING_AUTO_BYTES,
    ArrayData,
    CallbackSpec,
    DatasetSpec,
    ModelSpec,
    OptimizerSpec,
    SchedulerSpec,
    TableFile,
    TaskSpec,
)

__version__ = "0.1.0"

# name -> module that defines it, imported on first access (PEP 562) to keep start-up light.
_LAZY = {
    "train": "run.api",
    "build_config": "run.api",
    "TrainResult": "contracts",
    "export": "exporting.exporter",
    "predict": "exporting.predictor",
    "Callback": "contracts",
    "Trainer": "training.trainer",
    "Task": "contracts",
    "TrainContext": "contracts",
    "DataMeta": "contracts",
    "DataBundle": "contracts",
    "TensorSplit": "contracts",
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
    "STREAMING_AUTO_BYTES",
    "SchedulerSpec",
    "TableFile",
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
