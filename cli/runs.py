"""``trainforge runs``: RUNNING runs and whether their process is alive; ``--stale --mark-killed`` cleans up."""

from __future__ import annotations

import json

import click

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)"


@click.command(epilog="""\b
Examples:
  trainforge runs                        # RUNNING runs and the state of their process
  trainforge runs --stale                # only those whose process is gone (kill -9, OOM, reboot)
  trainforge runs --stale --mark-killed  # end them KILLED (checkpoints kept), print how to resume
  trainforge runs --repair-journal mlruns/optuna/journal.log  # drop a torn Optuna record (keeps a .bak)

\b
A run records its host and pid. It is stale when its host is this machine and that process is gone;
runs recorded on another host are listed as "other host" and never marked: run the command there.""")
@click.option("--stale", is_flag=True, help="Only runs whose process is gone.")
@click.option("--mark-killed", is_flag=True, help="With --stale: end those runs KILLED (checkpoints are kept).")
@click.option("--experiment", help="Only this experiment (default: all).")
@click.option("--tracking-uri", help=TRACKING_HELP)
@click.option("--repair-journal", "journal", type=click.Path(dir_okay=False), metavar="PATH",
              help="Drop the torn record a crash or a full disk left in this Optuna journal file (a copy is kept "
                   "as PATH.<time>.bak); finished trials stay.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs(stale: bool, mark_killed: bool, experiment: str | None, tracking_uri: str | None, journal: str | None,
         as_json: bool) -> None:
    """List RUNNING runs and whether the process that trains each one is still alive."""
    from trainforge.tracking import stale as stale_mod
    from trainforge.tracking.store import setup_uri

    if journal:
        _repair(journal, as_json)
        return
    if mark_killed and not stale:
        raise click.UsageError("--mark-killed needs --stale")
    setup_uri(tracking_uri)
    found = stale_mod.running_runs(experiment)
    if stale:
        found = [r for r in found if r.state == "dead"]
    if mark_killed:
        stale_mod.mark_killed([r.run_id for r in found])
    if as_json:
        click.echo(json.dumps([{**r.to_dict(), **({"status": "KILLED"} if mark_killed else {})} for r in found]))
        return
    if not found:
        click.echo("no stale runs" if stale else "no RUNNING runs")
        return
    labels = {"alive": "running", "dead": "process gone", "other-host": "other host: check there",
              "unknown": "no host/pid recorded"}
    for r in found:
        where = f"{r.host} pid {r.pid}" if r.pid else "-"
        click.echo(f"{r.run_id}  {r.experiment}/{r.name}  {where}  {labels[r.state]}"
                   + ("  -> KILLED" if mark_killed else "") + ("  resumable" if r.resumable else ""))
    resumable = [r for r in found if r.resumable and r.state in ("dead", "unknown")]
    if resumable:
        click.echo("resume with:")
        for r in resumable:
            click.echo(f"  trainforge train --resume {r.run_id}")
    if stale and not mark_killed:
        click.echo("mark them KILLED (checkpoints are kept): trainforge runs --stale --mark-killed")


def _repair(path: str, as_json: bool) -> None:
    from dataclasses import asdict

    from trainforge.tuning.journal import repair

    done = repair(path)
    if as_json:
        click.echo(json.dumps(asdict(done)))
    elif done.backup is None:
        click.echo(f"{path}: no torn or damaged line; nothing changed ({done.kept} records)")
    else:
        salvaged = (f"; kept the record appended onto line(s) {', '.join(map(str, done.salvaged))}"
                    if done.salvaged else "")
        dropped = f"dropped line(s) {', '.join(map(str, done.dropped))}" if done.dropped else "dropped torn bytes"
        click.echo(f"{path}: {dropped}{salvaged}; {done.kept} records kept; backup: {done.backup}")
