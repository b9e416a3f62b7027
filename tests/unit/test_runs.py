"""Executing runs (services/runs.py) on FakeDrive: counters, recovery, reconnects."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from drivesync.extensions import db
from drivesync.graph.errors import (
    AuthError,
)
from drivesync.models import Integration, SyncRun, utcnow
from drivesync.services import runs, sync, transfer
from drivesync.services.integrations import ReauthRequired
from tests.fakes import FakeDrive
from tests.unit.engine_helpers import row


@pytest.fixture
def app_overrides(fake: FakeDrive) -> dict[str, Any]:
    """Point the engine at the fake drive."""
    return {"SYNC_DRIVE_FACTORY": lambda user_id: fake, "SYNC_CONCURRENCY": 4}


def test_hundred_file_run_counts_files_and_bytes(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A 100-file run uploads every file once and its counters add up."""
    for i in range(100):
        make_file(user, f"f{i:03}.bin", bytes([i]) * (i + 1))
    run = sync.request_sync(user)
    assert (run.status, run.total, run.succeeded, run.failed) == ("done", 100, 100, 0)
    assert run.bytes_total == run.bytes_done == sum(range(1, 101))
    assert len(fake.uploads()) == 100
    assert run.finished_at is not None and run.percent == 100
    integration = db.session.execute(db.select(Integration)).scalar_one()
    assert integration.last_sync_at is not None
    # The run ends by re-reading the quota, so the dashboard's storage bar is current.
    assert integration.quota_used == sum(range(1, 101))
    assert integration.quota_total == fake.quota_total


def test_stale_claims_are_recovered_and_synced(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A claim whose heartbeat is older than the timeout is released; a fresh one stays."""
    dead, alive = make_file(user, "dead.txt"), make_file(user, "alive.txt")
    old = utcnow() - timedelta(seconds=app.config["SYNC_STALE_SECONDS"] + 5)
    for fid, beat in ((dead, old), (alive, utcnow())):
        sync.update_sync_status(user, fid, "syncing", claimed_at=beat, heartbeat_at=beat)
    assert transfer.recover_stale_claims(user) == 1
    assert row(dead).onedrive_sync_status == "not_synced"
    assert row(alive).onedrive_sync_status == "syncing"
    run = sync.request_sync(user)
    assert run.succeeded == 1 and row(dead).onedrive_sync_status == "synced"
    assert [c[1] for c in fake.uploads()] == ["dead.txt"]


def test_run_executed_twice_does_nothing_the_second_time(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """Executing a finished run again (a redelivered task) uploads nothing and counts nothing."""
    make_file(user)
    run = sync.request_sync(user)
    again = runs.execute_run(run.id, user)
    assert again is not None and (again.succeeded, again.status) == (1, "done")
    assert len(fake.uploads()) == 1
    db.session.execute(update(SyncRun).values(status="running"))  # as if the worker died
    db.session.commit()
    assert runs.execute_run(run.id, user).succeeded == 1
    assert len(fake.uploads()) == 1


def test_reauth_stops_the_run_and_leaves_files_not_synced(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """An AuthError stops the run, flags the integration, and leaves every file not_synced."""
    app.config["SYNC_CONCURRENCY"] = 1
    ids = [make_file(user, f"f{i}.txt", b"x") for i in range(5)]
    fake.fail_uploads(AuthError("invalid_grant", code="invalid_grant"), 1)
    run = sync.request_sync(user)
    assert run.status == "stopped" and "Reconnect OneDrive" in (run.error or "")
    assert (run.succeeded, run.failed) == (0, 0)
    assert len(fake.uploads()) == 1
    for fid in ids:
        f = row(fid)
        assert (f.onedrive_sync_status, f.onedrive_error) == ("not_synced", None)
    integration = db.session.execute(db.select(Integration)).scalar_one()
    assert integration.status == "needs_reauth"


def test_drive_factory_needing_reauth_stops_the_run(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A drive that cannot be built (reconnect needed) stops the run before any upload."""

    def refuse(user_id: int) -> FakeDrive:
        raise ReauthRequired()

    app.config["SYNC_DRIVE_FACTORY"] = refuse
    make_file(user)
    run = sync.request_sync(user)
    assert run.status == "stopped" and run.error and fake.uploads() == []


def test_a_run_requeued_before_its_dead_claim_is_stale_waits_for_it(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A worker died mid-upload; the scheduler found the run stale before the file's claim
    (its last beat came later). The run's next execution must not end ``done`` without the
    file: it stays running, stamped, and the execution after the claim went stale syncs it."""
    fid = make_file(user, "scan.pdf")
    run = sync.request_sync(user, [fid])  # eager: synced; now replay a dead worker's leftovers
    stale = utcnow() - timedelta(seconds=app.config["SYNC_STALE_SECONDS"] + 5)
    fresh = utcnow()
    sync.update_sync_status(user, fid, "syncing", claimed_at=fresh, heartbeat_at=fresh,
                            sync_run_id=run.id)  # fmt: skip
    db.session.execute(
        update(SyncRun).values(status="running", heartbeat_at=stale, succeeded=0, bytes_done=0)
    )
    db.session.commit()
    uploads = len(fake.uploads())
    again = runs.execute_run(run.id, user)
    assert again is not None and again.status == "running"  # not done without its file
    assert again.heartbeat_at is not None and again.heartbeat_at > stale
    assert row(fid).onedrive_sync_status == "syncing" and len(fake.uploads()) == uploads
    # One stale period later the dead claim is stale too: the next execution takes the file.
    sync.update_sync_status(user, fid, "syncing", claimed_at=fresh, heartbeat_at=stale)
    final = runs.execute_run(run.id, user)
    assert final is not None and (final.status, final.succeeded) == ("done", 1)
    # The dead worker's upload had reached OneDrive: its identical copy is adopted, not re-sent.
    assert row(fid).onedrive_sync_status == "synced" and len(fake.uploads()) == uploads
