"""Migrations build the schema on an empty database, and models and migrations do not drift."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

import drivesync.models  # noqa: F401  (registers the tables on db.metadata)
from drivesync.extensions import db
from tests.conftest import PG_OWNER_URL, migrate_database

EXPECTED_INDEXES = {
    "idx_files_onedrive_id",
    "idx_files_onedrive_sync_status",
    "idx_files_owner_onedrive_status",
}


def _drift(url: str) -> list:
    engine = create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, db.metadata)
    engine.dispose()
    return diff


def _check_schema(url: str) -> None:
    engine = create_engine(url)
    insp = inspect(engine)
    assert {"users", "integrations", "oauth_tokens", "files", "sync_runs"} <= set(
        insp.get_table_names()
    )
    assert EXPECTED_INDEXES <= {ix["name"] for ix in insp.get_indexes("files")}
    engine.dispose()


@pytest.mark.slow
def test_upgrade_on_empty_sqlite_and_no_drift(tmp_path: Path):
    """`flask db upgrade` builds the whole schema on an empty SQLite file with no drift."""
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    migrate_database(url)
    _check_schema(url)
    assert _drift(url) == []


@pytest.mark.slow
@pytest.mark.postgres
def test_upgrade_on_postgres_and_no_drift():
    """`flask db upgrade` builds the schema on an empty PostgreSQL database with no drift."""
    if not PG_OWNER_URL:
        pytest.skip("set DRIVESYNC_TEST_POSTGRES_URL to run PostgreSQL tests")
    engine = create_engine(PG_OWNER_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS migtest CASCADE"))
        conn.execute(text("CREATE SCHEMA migtest"))
    engine.dispose()
    url = PG_OWNER_URL + ("&" if "?" in PG_OWNER_URL else "?") + "options=-csearch_path%3Dmigtest"
    try:
        migrate_database(url)
        _check_schema(url)
        assert _drift(url) == []
    finally:
        engine = create_engine(PG_OWNER_URL)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS migtest CASCADE"))
        engine.dispose()
