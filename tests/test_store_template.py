"""New SQLite stores from the schema template (trainforge.tracking.schema): MLflow accepts them, each gets
its own Default experiment, a stale template is rebuilt, and any failure leaves the store to MLflow."""

from __future__ import annotations

import sqlite3

import pytest
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

from trainforge.tracking import schema


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("TRAINFORGE_CACHE_DIR", str(folder))
    return folder


def _revision(db) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_new_stores_come_from_one_template_and_mlflow_uses_them(tmp_path, cache):
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    for db in (first, second):
        db.parent.mkdir()
        assert schema.prepare(db) is True
    (template,) = cache.glob("mlflow-*.db")
    assert _revision(template) == _revision(first) == _get_latest_schema_revision()
    assert schema.prepare(first) is False  # an existing store is never touched
    for db in (first, second):
        client = MlflowClient(f"sqlite:///{db}")
        experiment_id = client.create_experiment("x")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "loss", 0.5, step=1)
        assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
        assert client.get_experiment("0").name == "Default"  # MLflow creates it on first open, as for its own


def test_a_stale_template_is_rebuilt(tmp_path, cache):
    db = tmp_path / "mlflow.db"
    schema.prepare(db)
    (template,) = cache.glob("mlflow-*.db")
    with sqlite3.connect(template) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'old'")
    db.unlink()
    assert schema.prepare(db) is True
    assert _revision(template) == _revision(db) == _get_latest_schema_revision()


def test_without_a_usable_cache_mlflow_creates_the_store(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TRAINFORGE_CACHE_DIR", str(blocker / "cache"))
    db = tmp_path / "mlflow.db"
    assert schema.prepare(db) is False
    assert not db.exists() and not list(tmp_path.glob(".mlflow.db.*"))  # no partial file
    client = MlflowClient(f"sqlite:///{db}")
    assert client.get_experiment("0").name == "Default"
    assert _revision(db) == _get_latest_schema_revision()
