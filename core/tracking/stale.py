"""Runs left RUNNING by a process that died (``kill -9``, OOM killer, a lost node).

Every run records the process that trains it in the tags ``trainforge.host``, ``trainforge.pid`` and, on
Linux, ``trainforge.pid_start`` (the process start time), so a pid reused by an unrelated process is not
mistaken for the run's (:mod:`trainforge.tracking.liveness`).
A RUNNING run is **stale** when its host is this machine and that process is gone. A run recorded on
another host cannot be checked from here: it is reported as such and never marked (run the command on
that host). Runs without these tags (written by older versions) are reported as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainforge.tracking import liveness
from trainforge.tracking import tags as tag
from trainforge.training.checkpoint import FOLDER, LAST

HOST_TAG, PID_TAG, START_TAG = tag.HOST, tag.PID, tag.PID_START


def process_tags() -> dict[str, str]:
    """The tags that identify this process: host name, pid and (Linux) its start time."""
    me = liveness.this_process()
    return {HOST_TAG: me.host, PID_TAG: str(me.pid), START_TAG: me.start}


def process_state(tags: dict[str, str]) -> str:
    """``alive``, ``dead``, ``other-host`` (cannot be checked here) or ``unknown`` (no tags) for a run's tags."""
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if not host or not pid or not pid.isdigit():
        return "unknown"
    state = liveness.alive(host, pid, tags.get(START_TAG))
    return "other-host" if state is None else "alive" if state else "dead"


@dataclass
class RunningRun:
    """A run whose status is RUNNING, and what is known about its process."""

    run_id: str
    experiment: str
    name: str
    host: str
    pid: str
    state: str  # alive | dead | other-host | unknown
    resumable: bool  # has checkpoints/last.pt

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment": self.experiment, "name": self.name, "host": self.host,
                "pid": self.pid, "state": self.state, "resumable": self.resumable}


def running_runs(experiment: str | None = None) -> list[RunningRun]:
    """Every RUNNING run of the store (or of ``experiment``), newest first, with its process state."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from trainforge.errors import TrainforgeError

    client = MlflowClient()
    try:
        experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    except Exception as exc:  # noqa: BLE001 - an unreadable store is one line for the user
        raise TrainforgeError(f"cannot read the MLflow tracking store: {exc}") from None
    if experiment is not None:
        experiments = [e for e in experiments if e.name == experiment]
        if not experiments:
            raise TrainforgeError(f"no experiment {experiment!r} in the tracking store")
    names = {e.experiment_id: e.name for e in experiments}
    if not names:
        return []
    runs = client.search_runs(list(names), filter_string="attributes.status = 'RUNNING'",
                              order_by=["attributes.start_time DESC"], max_results=5000)
    out = []
    for run in runs:
        tags = run.data.tags
        try:
            resumable = any(a.path == LAST for a in client.list_artifacts(run.info.run_id, FOLDER))
        except Exception:  # noqa: BLE001 - an unreadable artifact store: not resumable from here
            resumable = False
        out.append(RunningRun(run.info.run_id, names[run.info.experiment_id], run.info.run_name or "",
                              tags.get(HOST_TAG, ""), tags.get(PID_TAG, ""), process_state(tags), resumable))
    return out


def mark_killed(run_ids: list[str]) -> None:
    """End each run KILLED, noting why in ``trainforge.error``; artifacts (checkpoints) stay as they are."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for run_id in run_ids:
        client.set_tag(run_id, tag.ERROR, "process died (found by trainforge runs --stale)")
        client.set_terminated(run_id, status="KILLED")
