"""/healthz and /readyz: answers, failing parts named without detail, no sign-in, no limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from drivesync import create_app
from drivesync.extensions import limiter
from tests.conftest import PG_OWNER_URL, app_config, migrate_database
from tests.ops.conftest import dispose, free_port


@pytest.fixture
def migrated_app(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """An app on a database upgraded by ``flask db upgrade`` (migrations at head): a SQLite
    file, or PostgreSQL as the app role when configured."""
    if PG_OWNER_URL:
        url = request.getfixturevalue("database_url")
    else:
        url = f"sqlite:///{tmp_path / 'ready.sqlite3'}"
        migrate_database(url)
    app = create_app(app_config(tmp_path, url))
    Path(app.config["STORAGE_DIR"]).mkdir(parents=True, exist_ok=True)
    yield app
    dispose(app)


def test_healthz_answers_without_io(client):
    """/healthz answers 200 ok with no sign-in."""
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok"}
    assert r.headers["Cache-Control"] == "no-store"


def test_readyz_is_ready_on_a_migrated_database(migrated_app: Flask):
    """/readyz answers 200 when the database answers, is at head and storage is writable."""
    r = migrated_app.test_client().get("/readyz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"status": "ok"}


@pytest.mark.skipif(bool(PG_OWNER_URL), reason="create_all only on SQLite")
def test_readyz_names_unapplied_migrations(client):
    """A database built without migrations is not ready: 'migrations' fails, nothing else."""
    Path(client.application.config["STORAGE_DIR"]).mkdir(parents=True, exist_ok=True)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.get_json() == {"status": "unavailable", "failing": ["migrations"]}


def test_readyz_is_ready_before_the_first_upload(migrated_app: Flask, tmp_path: Path):
    """A fresh install (no uploads folder yet, its parent there) is ready; the folder is made."""
    fresh = tmp_path / "fresh-instance" / "uploads"
    fresh.parent.mkdir()
    migrated_app.config["STORAGE_DIR"] = str(fresh)
    assert migrated_app.test_client().get("/readyz").status_code == 200
    assert fresh.is_dir()


def test_readyz_names_missing_storage(migrated_app: Flask, tmp_path: Path):
    """A storage folder that is gone makes 'storage' fail, with no path in the answer."""
    migrated_app.config["STORAGE_DIR"] = str(tmp_path / "gone" / "uploads")
    r = migrated_app.test_client().get("/readyz")
    assert r.status_code == 503
    assert r.get_json() == {"status": "unavailable", "failing": ["storage"]}
    assert "gone" not in r.get_data(as_text=True)


def test_readyz_names_an_unreachable_database_without_its_host(tmp_path: Path):
    """A database that refuses connections fails 'database' and 'migrations', host unsaid."""
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing"
    app = create_app(app_config(tmp_path, url))
    Path(app.config["STORAGE_DIR"]).mkdir(parents=True, exist_ok=True)
    r = app.test_client().get("/readyz")
    dispose(app)
    assert r.status_code == 503
    assert r.get_json()["failing"] == ["database", "migrations"]
    assert "127.0.0.1" not in r.get_data(as_text=True)


def test_readyz_checks_the_broker_only_with_celery(migrated_app: Flask):
    """With the Celery backend an unreachable broker fails 'broker'."""
    migrated_app.config.update(
        TASK_BACKEND="celery", CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0"
    )
    r = migrated_app.test_client().get("/readyz")
    assert r.status_code == 503
    assert r.get_json() == {"status": "unavailable", "failing": ["broker"]}


def test_health_endpoints_are_exempt_from_rate_limits_and_csrf(tmp_path: Path, database_url: str):
    """Probes are never rate limited, even under a tiny default limit, and need no CSRF token."""
    app = create_app(
        app_config(
            tmp_path,
            database_url,
            RATELIMIT_ENABLED=True,
            RATELIMIT_DEFAULT="1 per minute",
            RATELIMIT_STORAGE_URI="memory://",
        )
    )
    client = app.test_client()
    try:
        assert [client.get("/healthz").status_code for _ in range(5)] == [200] * 5
        assert client.get("/readyz").status_code in (200, 503)
        assert client.get("/readyz").status_code in (200, 503)
        assert client.get("/library/").status_code != 429  # the default limit applies here …
        assert client.get("/library/").status_code == 429  # … and bites on the second request
    finally:
        limiter.reset()
        # The limiter is one object for the process: its default limit would outlive this app.
        limiter.limit_manager.set_default_limits([])
        dispose(app)
