"""What a failed or stopped command says about its run, in its one line.

Read back from the store rather than assumed, so the line is true whatever the moment the signal or the
fault came: a KILLED run with or without its best checkpoint, a run that had already FINISHED, a run the
store was too full to mark (left RUNNING, which ``trainforge runs --stale`` finds once the process is gone).
"""

from __future__ import annotations

from trainforge.training.checkpoint import BEST, FOLDER, LAST


def stopped(run_id: str) -> str:
    """What a command stopped by a signal says about its run, read back from the store (so it is true
    whatever the moment): ``run ID ended KILLED with its best checkpoint; resume: trainforge train --resume ID``,
    ``... ended KILLED without a best checkpoint``, ``run ID had already FINISHED``, or its status when it
    could not be marked (RUNNING: ``trainforge runs --stale --mark-killed`` ends it). Never raises."""
    from mlflow.tracking import MlflowClient

    from trainforge.tracking import store

    try:
        with store.deferred_interrupt():
            client = MlflowClient()
            status = client.get_run(run_id).info.status
            saved = {a.path for a in client.list_artifacts(run_id, FOLDER)}
    except BaseException:  # noqa: BLE001 - an unreadable store: say no more than the run's id
        return f"run {run_id}"
    resume = f"; resume: trainforge train --resume {run_id}" if LAST in saved else ""
    if status == "KILLED" and BEST in saved:
        return f"run {run_id} ended KILLED with its best checkpoint; resume: trainforge train --resume {run_id}"
    if status == "KILLED":
        return f"run {run_id} ended KILLED without a best checkpoint{resume}"
    if status == "FINISHED":
        return f"run {run_id} had already FINISHED"
    if status == "RUNNING":
        return f"run {run_id} is still RUNNING in the store (end it: trainforge runs --stale --mark-killed)"
    return f"run {run_id} ended {status}{resume}"


def failed(exc: BaseException) -> str:
    """``; run ID ended FAILED`` or ``; run ID could not be marked FAILED ...`` for an exception that left
    :func:`trainforge.tracking.store.run_status` (which records ``run_id`` and ``run_marked`` on it), else ``""``."""
    run_id = getattr(exc, "run_id", None)
    if not run_id:
        return ""
    kept = ""
    try:
        from mlflow.tracking import MlflowClient

        saved = {a.path for a in MlflowClient().list_artifacts(run_id, FOLDER)}
        kept = " with its best checkpoint" if BEST in saved else " without a best checkpoint"
    except Exception:  # noqa: BLE001 - an unreadable store: say no more
        pass
    if getattr(exc, "run_marked", False):
        return f"; run {run_id} ended FAILED{kept}"
    return (f"; run {run_id} could not be marked FAILED ({kept.strip() or 'checkpoints unknown'}) and stays "
            "RUNNING: once there is room, trainforge runs --stale --mark-killed")
