"""Sync requests and status (services/sync.py) on FakeDrive: runs, conflicts, isolation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event

from drivesync import tasks
from drivesync.extensions import db
from drivesync.graph.errors import (
    GraphError,
)
from drivesync.models import Integration, SyncRun, utcnow
from drivesync.scope import user_scope
from drivesync.services import library, scheduler, sync
from drivesync.services.errors import Conflict, NotFound, ValidationError
from drivesync.services.integrations import NotConnected, ReauthRequired
from drivesync.services.storage import LocalStorage
from tests.fakes import FakeDrive
from tests.unit.engine_helpers import make_conflict, row


@pytest.fixture
def app_overrides(fake: FakeDrive) -> dict[str, Any]:
    """Point the engine at the fake drive."""
    return {"SYNC_DRIVE_FACTORY": lambda user_id: fake, "SYNC_CONCURRENCY": 4}


def test_sync_all_uploads_and_records_every_pending_file(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """Sync All uploads each pending file and records its OneDrive identity and hashes."""
    ids = [make_file(user, f"file{i}.txt", f"data {i}".encode()) for i in range(3)]
    run = sync.request_sync(user)
    assert (run.status, run.total, run.succeeded, run.failed) == ("done", 3, 3, 0)
    assert run.bytes_done == run.bytes_total == sum(len(f"data {i}") for i in range(3))
    for fid in ids:
        f = row(fid)
        assert f.onedrive_sync_status == "synced"
        assert f.onedrive_id in fake.items
        assert f.onedrive_etag and f.onedrive_ctag and f.onedrive_web_url
        assert f.onedrive_path == f"/drivesync/{f.original_name}"
        assert f.synced_content_hash == f.content_hash
        assert f.onedrive_synced_at is not None and f.claimed_at is None
        assert fake.content[f.onedrive_id] == f"data {ids.index(fid)}".encode()
    assert [c[2] for c in fake.uploads()] == ["fail"] * 3
    assert db.session.get(Integration, 1).last_sync_at is not None
    assert fake.closed >= 1


def test_batch_limit_takes_the_oldest_hundred(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """With 101 pending files and a limit of 100, one run takes 100 and leaves the newest."""
    ids = [make_file(user, f"f{i:03}.txt", b"x") for i in range(101)]
    run = sync.request_sync(user)
    assert run.total == 100 and run.succeeded == 100
    last = row(ids[-1])
    assert last.onedrive_sync_status == "not_synced" and last.sync_run_id is None
    assert [f.id for f in sync.pending_files(user)] == [ids[-1]]


def test_nothing_pending_creates_no_run(
    app: Flask, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """Sync All with nothing pending says so and creates no empty run."""
    with pytest.raises(sync.NothingToSync):
        sync.request_sync(user)
    assert db.session.execute(db.select(SyncRun)).first() is None


def test_request_needs_an_active_integration(
    app: Flask,
    make_user: Callable[..., int],
    link_onedrive: Callable[..., None],
    make_file: Callable[..., int],
) -> None:
    """Sync is refused without an integration, and with one that needs reconnecting."""
    lonely, stale = make_user(), make_user()
    link_onedrive(stale, status="needs_reauth")
    for uid, error in ((lonely, NotConnected), (stale, ReauthRequired)):
        make_file(uid)
        with app.app_context(), user_scope(uid), pytest.raises(error):
            sync.request_sync(uid)


def test_active_run_is_returned_and_blocks_one_file_runs(
    app: Flask, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A second Sync All returns the running run; a retry meanwhile is refused."""
    fid = make_file(user)
    sync.update_sync_status(user, fid, "error", onedrive_error="boom")
    running = SyncRun(user_id=user, status="running", started_at=utcnow(), total=1)
    db.session.add(running)
    db.session.commit()
    assert sync.request_sync(user).id == running.id
    with pytest.raises(Conflict):
        sync.retry_file(user, fid)


def test_abandoned_run_is_closed_and_a_new_one_starts(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A run left running by a dead process for longer than the stale timeout stops blocking."""
    make_file(user)
    old = utcnow() - timedelta(hours=1)
    dead = SyncRun(user_id=user, status="running", created_at=old, started_at=old, total=1)
    db.session.add(dead)
    db.session.commit()
    run = sync.request_sync(user)
    assert run.id != dead.id and run.status == "done"
    assert db.session.get(SyncRun, dead.id).status == "failed"


def test_resolve_keep_both_uploads_a_renamed_copy(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int]
) -> None:
    """Keep both uploads this file under a new name and tracks that copy; theirs stays."""
    fid = make_conflict(app, fake, user, make_file)
    with app.app_context(), user_scope(user):
        old_item = row(fid).onedrive_id
        run = sync.resolve_conflict(user, fid, "keep_both")
        assert run is not None and (run.total, run.succeeded) == (1, 1)
        f = row(fid)
        assert f.onedrive_sync_status == "synced" and f.onedrive_id != old_item
        assert f.onedrive_name == "notes 1.txt"
        assert fake.content[f.onedrive_id] == b"version 2 local"
        assert fake.content[old_item] == b"edited on OneDrive"


def test_resolve_replace_overwrites_onedrive_copy(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int]
) -> None:
    """Replace overwrites OneDrive's copy of the same item with this file."""
    fid = make_conflict(app, fake, user, make_file)
    with app.app_context(), user_scope(user):
        item = row(fid).onedrive_id
        sync.resolve_conflict(user, fid, "replace")
        f = row(fid)
        assert f.onedrive_sync_status == "synced" and f.onedrive_id == item
        assert fake.content[item] == b"version 2 local"
        assert f.synced_content_hash == f.content_hash


def test_resolve_replace_survives_a_lost_message(
    app: Flask,
    fake: FakeDrive,
    user: int,
    make_file: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Replace whose run message is lost is queued again by the scheduler and still replaces."""
    fid = make_conflict(app, fake, user, make_file)
    with app.app_context(), user_scope(user):
        item = row(fid).onedrive_id
        monkeypatch.setattr(tasks, "enqueue_run", lambda *a, **k: None)  # the message is lost
        run = sync.resolve_conflict(user, fid, "replace")
        assert run is not None and (run.status, run.resolve) == ("queued", "replace")
        monkeypatch.undo()
    with app.app_context():
        assert user in scheduler.tick(utcnow() + timedelta(seconds=3600))
    with app.app_context(), user_scope(user):
        f = row(fid)
        assert f.onedrive_sync_status == "synced" and f.onedrive_id == item
        assert fake.content[item] == b"version 2 local"
        done = db.session.get(SyncRun, run.id)
        assert done is not None and (done.status, done.succeeded, done.requeues) == ("done", 1, 1)


def test_resolve_skip_parks_the_file_until_asked_again(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int]
) -> None:
    """Skip leaves OneDrive's copy alone and keeps the file out of Sync All until requested."""
    fid = make_conflict(app, fake, user, make_file)
    uploads = len(fake.uploads())
    with app.app_context(), user_scope(user):
        assert sync.resolve_conflict(user, fid, "skip") is None
        f = row(fid)
        assert (f.onedrive_sync_status, f.onedrive_note) == ("not_synced", sync.SKIPPED_NOTE)
        assert sync.pending_files(user) == []
        with pytest.raises(sync.NothingToSync):
            sync.request_sync(user)
        # Asked again explicitly, the engine still sees both sides changed.
        sync.request_sync(user, [fid])
        assert row(fid).onedrive_sync_status == "conflict"
    assert len(fake.uploads()) == uploads


def test_skipped_file_returns_to_sync_all_when_replaced(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int]
) -> None:
    """A skipped file stays out of Sync All only while its content is the one skipped."""
    fid = make_conflict(app, fake, user, make_file)
    with app.app_context(), user_scope(user):
        sync.resolve_conflict(user, fid, "skip")
        assert sync.pending_files(user) == []
        store = LocalStorage(app.config["STORAGE_DIR"])
        incoming = store.new_incoming()
        incoming.write(b"version 3 local")
        library.replace_file(user, fid, incoming, store)
        f = row(fid)
        assert f.onedrive_note is None and f.skipped_hash != f.content_hash
        assert [p.id for p in sync.pending_files(user)] == [fid]


def test_resolve_rejects_unknown_actions_and_non_conflicts(
    app: Flask, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """Only the three actions exist, and only a conflicted file can be resolved."""
    fid = make_file(user)
    with pytest.raises(ValidationError):
        sync.resolve_conflict(user, fid, "merge")
    with pytest.raises(Conflict):
        sync.resolve_conflict(user, fid, "replace")


def test_retry_file_syncs_a_failed_file(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """Retry takes a failed file through a one-file run; other states cannot be retried."""
    fid = make_file(user)
    fake.fail_uploads(GraphError("boom", status=500))
    sync.request_sync(user)
    assert row(fid).onedrive_sync_status == "error"
    run = sync.retry_file(user, fid)
    assert (run.total, run.succeeded) == (1, 1) and row(fid).onedrive_sync_status == "synced"
    with pytest.raises(Conflict):
        sync.retry_file(user, fid)


def test_progress_reads_use_a_constant_number_of_statements(
    app: Flask, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """run_status and file_progress cost the same SQL for 3 files and for 30."""
    counts = []
    for n in (3, 30):
        for i in range(n):
            make_file(user, f"n{n}-{i}.txt", b"x")
        run = sync.request_sync(user)
        statements: list[str] = []

        def count(*args: Any, _s: list[str] = statements) -> None:
            _s.append(args[2])

        event.listen(db.engine, "before_cursor_execute", count)
        try:
            db.session.expire_all()
            assert sync.run_status(user) is not None
            files = sync.file_progress(user, run.id)
            assert len(files) == n and all(f.bytes_sent == f.size for f in files)
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
        counts.append(len([s for s in statements if s.lstrip().upper().startswith("SELECT")]))
    assert counts[0] == counts[1] == 2


def test_other_users_cannot_touch_a_users_files(
    app: Flask,
    fake: FakeDrive,
    user: int,
    make_user: Callable[..., int],
    link_onedrive: Callable[..., None],
    make_file: Callable[..., int],
) -> None:
    """User B cannot request, retry or resolve user A's files: they do not exist for B."""
    fid = make_file(user)
    other = make_user()
    link_onedrive(other)
    make_file(other, "mine.txt")
    with app.app_context(), user_scope(other):
        with pytest.raises(NotFound):
            sync.request_sync(other, [fid])
        with pytest.raises(NotFound):
            sync.retry_file(other, fid)
        with pytest.raises(NotFound):
            sync.resolve_conflict(other, fid, "replace")
        run = sync.request_sync(other)
        assert sync.file_progress(other, run.id)[0].original_name == "mine.txt"
        assert sync.mark_for_sync(other, [fid]) == 0
    with app.app_context(), user_scope(user):
        assert row(fid).onedrive_sync_status == "not_synced"
        assert sync.run_status(user) is None
