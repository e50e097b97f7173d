"""Hook specifications: what a trainforge plugin can register.

Every hook is called with keyword arguments only, so a spec can grow new arguments without breaking
plugins (pluggy passes an implementation just the arguments it names).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only
    from trainforge.specs import CallbackSpec, DatasetSpec, ModelSpec, OptimizerSpec, SchedulerSpec, TaskSpec

PROJECT = "trainforge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    "Register model specs: register(ModelSpec(name, build, tasks, defaults, search_space, ...))."


@hookspec
def register_optimizers(register: Callable[[OptimizerSpec], None]) -> None:
    "Register optimizer specs: register(OptimizerSpec(name, build, defaults, search_space, ...))."


@hookspec
def register_datasets(register: Callable[[DatasetSpec], None]) -> None:
    "Register dataset specs: register(DatasetSpec(name, load, defaults, ...))."


@hookspec
def register_schedulers(register: Callable[[SchedulerSpec], None]) -> None:
    "Register learning-rate scheduler specs: register(SchedulerSpec(name, build, defaults, ...))."


@hookspec
def register_callbacks(register: Callable[[CallbackSpec], None]) -> None:
    "Register trainer callback specs: register(CallbackSpec(name, build, default_on, ...))."


@hookspec
def register_tasks(register: Callable[[TaskSpec], None]) -> None:
    "Register task specs: register(TaskSpec(name, build, target, ...)); build(meta) returns a Task."
