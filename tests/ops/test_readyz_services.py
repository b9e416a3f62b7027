"""/readyz follows a real PostgreSQL and a real Redis going down and coming back (private ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivesync import create_app
from tests.conftest import app_config, migrate_database
from tests.ops.conftest import PrivatePostgres, PrivateRedis, dispose

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.celery]


def test_readyz_follows_postgresql_and_redis_down_and_up(
    tmp_path: Path, private_postgres: PrivatePostgres, private_redis: PrivateRedis
):
    """Ready with both up; 503 naming the database when PostgreSQL stops, the broker when Redis
    stops; ready again once each is back (the shared servers are never touched)."""
    migrate_database(private_postgres.url)
    app = create_app(
        app_config(
            tmp_path,
            private_postgres.url,
            TASK_BACKEND="celery",
            CELERY_BROKER_URL=private_redis.url,
        )
    )
    Path(app.config["STORAGE_DIR"]).mkdir(parents=True)
    client = app.test_client()
    try:
        assert client.get("/readyz").get_json() == {"status": "ok"}

        private_postgres.stop()
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.get_json()["failing"] == ["database", "migrations"]
        assert str(private_postgres.port) not in r.get_data(as_text=True)
        private_postgres.start()
        r = client.get("/readyz")
        assert (r.status_code, r.get_json()) == (200, {"status": "ok"})

        private_redis.stop()
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.get_json()["failing"] == ["broker"]
        private_redis.start()
        assert client.get("/readyz").status_code == 200
    finally:
        dispose(app)
