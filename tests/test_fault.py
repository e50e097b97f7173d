"""Fault tests on real engines: a ``trainforge tune`` worker SIGKILLed mid-trial on a PostgreSQL study, the
study-wide target (``--study-trials``) reached exactly by racing workers, heartbeat settings.

The PostgreSQL test needs ``TRAINFORGE_TEST_POSTGRES_URL`` (CI sets it: ``eval "$(.ci/postgres)"``); each
run creates its own database (dropped afterwards) so reruns never collide.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import error_line, last_json, mlflow_client
from optuna.trial import TrialState

import trainforge

EXE = shutil.which("trainforge", path=str(Path(sys.executable).parent)) or shutil.which("trainforge")
PG_ENV = "TRAINFORGE_TEST_POSTGRES_URL"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    return {**env, "MLFLOW_LOGGING_LEVEL": "WARNING", **extra}


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database on the server of ``$TRAINFORGE_TEST_POSTGRES_URL``, dropped afterwards."""
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI"):  # CI must run it: a missing server fails instead of skipping
            pytest.fail(f"{PG_ENV} is not set under CI (.ci/run sets it from .ci/postgres)")
        pytest.skip(f"{PG_ENV} is not set: run `make test` where PostgreSQL is installed, or "
                    f"eval \"$(.ci/postgres)\" first (README, Tests)")
    import sqlalchemy
    from sqlalchemy.engine import make_url

    name = f"trainforge_fault_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(_sqlalchemy(base), isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _sqlalchemy(url: str) -> str:
    """The test reads PostgreSQL with psycopg2 when psycopg 3 (SQLAlchemy 2.1's default driver) is missing."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _complete(trials) -> dict[int, float]:
    return {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}


def _kill_one_worker_mid_trial(workdir: Path, storage_arg: str, open_storage, *, workers: int, target: int,
                               dataset: str, epochs: int) -> None:
    """Start ``workers`` ``trainforge tune --study-trials target`` processes on one study, SIGKILL one of them
    mid-trial, let the others finish, and check the study (read with Optuna's own API) and MLflow."""
    study_name = f"fault-{uuid.uuid4().hex[:8]}"
    Path("space.yaml").write_text(yaml.safe_dump({"search_space": {"trainer.batch_size": 32, "mlp.width": 64}}))
    args = [EXE, "tune", "--model", "mlp", "--dataset", dataset, "--epochs", str(epochs), "-p", "trainer.patience=0",
            "--config", "space.yaml", "--pruner", "none", "--study", study_name, "--storage", storage_arg,
            "--study-trials", str(target), "--no-export", "--quiet", "--json",
            # fast detection of the dead worker, with room for live ones on a busy 2-core machine
            "--heartbeat-interval", "1", "--heartbeat-grace", "6"]
    env = _env()
    procs, victim, storage = {}, None, None
    for _ in range(workers):  # the same moment, on a fresh store: the schema is created once, under a lock
        proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs[proc.pid] = proc

    def trials():
        return optuna.load_study(study_name=study_name, storage=storage).get_trials()

    try:
        # Mid-trial: a worker's RUNNING trial that has reported an epoch but not all, once some trial is COMPLETE. SIGSTOP
        # freezes the worker so the trial cannot finish between the check and the SIGKILL; if it already had,
        # the worker is let go and the test looks again.
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.1)
            assert all(p.poll() is None for p in procs.values()), "a worker ended before the kill"
            try:
                storage = storage or open_storage()
                current = trials()
            except Exception:  # the schema or the study is not there yet
                storage = None
                continue
            owned = [t for t in current if t.state == TrialState.RUNNING and 0 < len(t.intermediate_values) < epochs
                     and t.user_attrs.get("trainforge.pid") in procs]
            if not _complete(current) or not owned:
                continue
            pid = owned[0].user_attrs["trainforge.pid"]
            os.kill(pid, signal.SIGSTOP)
            killed = next(t for t in trials() if t.number == owned[0].number)
            if killed.state == TrialState.RUNNING and killed.user_attrs.get("trainforge.pid") == pid \
                    and len(killed.intermediate_values) < epochs:  # epochs left: its MLflow run is RUNNING
                before = _complete(trials())
                os.kill(pid, signal.SIGKILL)
                victim = procs.pop(pid)
            else:
                os.kill(pid, signal.SIGCONT)
        assert victim is not None, "no worker was caught mid-trial"
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        after = _complete(trials())
        assert before and set(before) <= set(after)
        outputs = {pid: p.communicate(timeout=300) for pid, p in procs.items()}
        assert all(p.returncode == 0 for p in procs.values()), "\n".join(err[-3000:] for _, err in outputs.values())
    finally:
        for proc in [*procs.values(), *([victim] if victim is not None else [])]:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()

    final_trials = trials()
    final = _complete(final_trials)
    # nothing that was COMPLETE changed; the study holds exactly what was asked
    assert all(final.get(n) == v for n, v in {**before, **after}.items())
    assert len(final) == target and not [t for t in final_trials if t.state == TrialState.PRUNED]
    assert not [t for t in final_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # the killed trial: FAIL, retried once (Optuna's RetryHeartbeatStaleTrialCallback marks the copy with the
    # system attr failed_trial), by a surviving worker, to COMPLETE
    dead = next(t for t in final_trials if t.number == killed.number)
    assert dead.state == TrialState.FAIL
    assert [t.number for t in final_trials if t.state == TrialState.FAIL] == [killed.number]
    retries = [t for t in final_trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1, [(t.number, t.state, t.system_attrs) for t in final_trials]
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["trainforge.pid"] in procs
    # every survivor reports the final study
    assert all((last_json(out)["n_complete"], last_json(out)["n_fail"]) == (target, 1) for out, _ in outputs.values())
    # MLflow: the dead trial's child run was ended FAILED by the worker that noticed; the retry has its own
    client = mlflow_client(workdir)
    run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["trainforge.trial_state"] == "FAIL"
    assert retry.user_attrs["mlflow_run_id"] != dead.user_attrs["mlflow_run_id"]
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).info.status == "FINISHED"


def test_postgres_sigkilled_worker_trial_is_failed_retried_and_the_study_reaches_its_target(workdir, pg_url):
    _kill_one_worker_mid_trial(workdir, pg_url, lambda: optuna.storages.RDBStorage(_sqlalchemy(pg_url)),
                               workers=3, target=4, dataset="digits", epochs=5)


def test_journal_sigkilled_worker_trial_is_retried_by_a_worker_of_the_same_machine(workdir):
    path = workdir / "optuna" / "journal.log"
    _kill_one_worker_mid_trial(
        workdir, str(path),
        lambda: optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path))),
        workers=2, target=3, dataset="digits", epochs=5)


def test_study_trials_racing_workers_end_with_exactly_n_finished(workdir, cli):
    url, target = f"sqlite:///{workdir}/optuna.db", 5
    args = [EXE, "tune", "--model", "mlp", "--dataset", "iris", "--epochs", "3", "--pruner", "none",
            "--study", "target", "--storage", url, "--study-trials", str(target), "--no-export", "--quiet", "--json"]
    procs = [subprocess.Popen(args, cwd=workdir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [last_json(out) for out, _ in outputs]
    assert sum(r["n_trials_run"] for r in results) == target  # together exactly N, no overshoot
    assert all(r["n_complete"] == target for r in results)
    trials = optuna.load_study(study_name="target", storage=url).get_trials()
    assert sorted(t.number for t in trials) == list(range(target))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    pids = {t.user_attrs["trainforge.pid"] for t in trials}
    assert pids <= {p.pid for p in procs}

    # a late worker finds the target reached and runs nothing; raising the target runs just the difference
    late = last_json(cli("tune", "--study", "target", "--storage", url, "--study-trials", str(target),
                         "--no-export", "--quiet", "--json").output)
    assert (late["n_trials_run"], late["n_complete"]) == (0, target)
    more = last_json(cli("tune", "--study", "target", "--storage", url, "--study-trials", str(target + 2),
                         "--n-trials", "1", "--no-export", "--quiet", "--json").output)
    assert (more["n_trials_run"], more["n_complete"]) == (1, target + 1)  # --n-trials caps this command


@pytest.mark.parametrize("args, section, message", [
    (("--heartbeat-interval", "10", "--heartbeat-grace", "5"), {}, "heartbeat_grace=5.0 must be longer than"),
    ((), {"heartbeat_interval": "often"}, "heartbeat_interval must be a positive number of seconds, got 'often'"),
    ((), {"heartbeat_grace": -5}, "heartbeat_grace must be a positive number of seconds, got -5"),
])
def test_bad_heartbeat_setting_is_one_error_line(cli, workdir, args, section, message):
    Path("hb.yaml").write_text(yaml.safe_dump({"tune": section}))
    line = error_line(cli("tune", "--model", "mlp", "--dataset", "iris", "--n-trials", "1", "--storage",
                          "sqlite:///optuna.db", "--quiet", "--config", "hb.yaml", *args, ok=False))
    assert message in line


def test_heartbeat_option_out_of_range_is_a_usage_error(cli):
    result = cli("tune", "--heartbeat-interval", "0", ok=False)
    assert result.exit_code == 2 and "--heartbeat-interval" in result.output


def build_broken(input_shape, output_dim, width=8):
    import math

    from torch import nn

    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(math.prod(input_shape), output_dim)

        def forward(self, x):
            return self.net(x) * float("nan")  # every trial diverges

    return Broken()


class BrokenPlugin:
    @trainforge.hookimpl
    def register_models(self, register):
        register(trainforge.ModelSpec(name="broken", build=build_broken, input="vector", tasks={"classification"},
                                      defaults={"width": 8},
                                      search_space=lambda trial: {"width": trial.suggest_int("width", 4, 16)}))


def test_study_trials_stops_with_one_error_line_when_trials_keep_failing(cli, workdir, fresh_plugins):
    fresh_plugins.register_plugin(BrokenPlugin(), name="broken-test-plugin")
    url = f"sqlite:///{workdir}/optuna.db"
    line = error_line(cli("tune", "--model", "broken", "--dataset", "iris", "--epochs", "1", "--study", "broken",
                          "--storage", url, "--study-trials", "2", "--no-export", "--quiet", ok=False))
    assert "study 'broken' has 6 failed trials, more than --study-trials 2 + 3" in line
    trials = optuna.load_study(study_name="broken", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 6  # it stopped at once, not one trial later
