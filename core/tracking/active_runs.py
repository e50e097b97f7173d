"""MLflow's active-run state of this thread, kept aside and put back.

MLflow's fluent API (``mlflow.start_run``, ``mlflow.active_run``, ``mlflow.end_run``) keeps a stack of active runs
per thread (``mlflow.tracking.fluent._active_run_stack``, a ``ThreadLocalVariable``) and the last active run id.
Code that runs several runs' bodies in turn on one thread (:mod:`trainforge.cv.lockstep`'s folds, greenlets on
the trial's thread) gives each body its own state with these two functions.
"""

from __future__ import annotations

from typing import Any


def active_runs() -> tuple[list[Any], Any]:
    """This thread's MLflow fluent state: the active-run stack (``mlflow.start_run`` pushes, ``end_run`` pops;
    the list itself, not a copy) and the last active run id, to hand to :func:`set_active_runs` later."""
    from mlflow.tracking import fluent

    return fluent._active_run_stack.get(), fluent._last_active_run_id.get()


def set_active_runs(state: tuple[list[Any], Any]) -> None:
    """Make ``state`` (from :func:`active_runs`) this thread's MLflow fluent state again."""
    from mlflow.tracking import fluent

    fluent._active_run_stack.set(state[0])
    fluent._last_active_run_id.set(state[1])
