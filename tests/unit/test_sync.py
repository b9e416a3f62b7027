"""The sync engine against FakeDrive: state machine, runs, conflicts, errors, isolation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, update

from drivesync.extensions import db
from drivesync.graph.errors import (
    AuthError,
    FileTooLargeError,
    GraphError,
    InsufficientStorageError,
    IntegrityError,
)
from drivesync.models import File, Integration, SyncRun, utcnow
from drivesync.scope import user_scope
from drivesync.services import library, sync
from drivesync.services.errors import Conflict, NotFound, ValidationError
from drivesync.services.integrations import NotConnected, ReauthRequired
from drivesync.services.storage import LocalStorage
from tests.fakes import FOLDER_ID, FakeDrive

MiB = 1024 * 1024


@pytest.fixture
def fake() -> FakeDrive:
    """An empty in-memory OneDrive."""
    return FakeDrive()


@pytest.fixture
def app_overrides(fake: FakeDrive) -> dict[str, Any]:
    """Point the engine at the fake drive."""
    return {"SYNC_DRIVE_FACTORY": lambda user_id: fake, "SYNC_CONCURRENCY": 4}


@pytest.fixture
def connect(app: Flask) -> Callable[..., None]:
    """Give a user an OneDrive integration (active unless told otherwise)."""

    def _connect(user_id: int, status: str = "active") -> None:
        with app.app_context(), user_scope(user_id):
            db.session.add(
                Integration(
                    user_id=user_id,
                    status=status,
                    folder_id=FOLDER_ID,
                    drive_type="personal",
                    account_email="a@example.com",
                )
            )
            db.session.commit()

    return _connect


@pytest.fixture
def user(make_user: Callable[..., int], connect: Callable[..., None]) -> int:
    """A connected user."""
    uid = make_user()
    connect(uid)
    return uid


@pytest.fixture
def ctx(app: Flask, user: int) -> Iterator[None]:
    """An app context scoped to ``user`` for calling services directly."""
    with app.app_context(), user_scope(user):
        yield
        db.session.rollback()


def row(file_id: int) -> File:
    """Return a fresh copy of a file row (inside the test's app context)."""
    db.session.expire_all()
    f = db.session.get(File, file_id)
    assert f is not None
    return f


def replace_bytes(app: Flask, owner_id: int, file_id: int, data: bytes) -> None:
    """Replace a file through the library service, in its own app context (as a request would)."""
    with app.app_context(), user_scope(owner_id):
        store = LocalStorage(app.config["STORAGE_DIR"])
        incoming = store.new_incoming()
        incoming.write(data)
        library.replace_file(owner_id, file_id, incoming, store)


def make_conflict(app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int]) -> int:
    """Return a synced file whose local and OneDrive copies then both changed (a conflict)."""
    fid = make_file(user, "notes.txt", b"version 1")
    with app.app_context(), user_scope(user):
        sync.request_sync(user)
        item_id = row(fid).onedrive_id
    assert item_id is not None
    fake.modify(item_id, b"edited on OneDrive")
    replace_bytes(app, user, fid, b"version 2 local")
    with app.app_context(), user_scope(user):
        sync.request_sync(user)
        assert row(fid).onedrive_sync_status == "conflict"
    return fid


# -- the happy path --------------------------------------------------------------------------------


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
    connect: Callable[..., None],
    make_file: Callable[..., int],
) -> None:
    """Sync is refused without an integration, and with one that needs reconnecting."""
    lonely, stale = make_user(), make_user()
    connect(stale, status="needs_reauth")
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


# -- the state machine -----------------------------------------------------------------------------


def test_transitions_are_conditional(
    app: Flask, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """update_sync_status moves a file only from the expected status."""
    fid = make_file(user)
    assert not sync.update_sync_status(user, fid, "synced", expected="syncing")
    assert sync.update_sync_status(user, fid, "syncing", expected="not_synced")
    assert not sync.update_sync_status(user, fid, "syncing", expected="not_synced")
    assert sync.update_sync_status(user, fid, "error", expected="syncing", onedrive_error="x")
    assert sync.mark_for_sync(user, [fid]) == 1
    f = row(fid)
    assert (f.onedrive_sync_status, f.onedrive_error) == ("not_synced", None)


def test_two_threads_racing_for_one_file_upload_it_once(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int]
) -> None:
    """Two workers claiming the same file at once produce exactly one upload."""
    fid = make_file(user)
    fake.upload_delay = 0.2
    barrier = threading.Barrier(2)
    outcomes: list[sync.SyncOutcome] = []

    def worker() -> None:
        with app.app_context(), user_scope(user):
            barrier.wait()
            outcomes.append(sync.sync_file(fid, user, fake, folder_id=FOLDER_ID))
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fake.uploads()) == 1
    # Exactly one held the claim. The other lost the conditional UPDATE ("busy"), or saw the
    # winner's claim ("syncing") or, on a slow start, its result ("synced").
    [winner] = [o for o in outcomes if o.claimed]
    [loser] = [o for o in outcomes if not o.claimed]
    assert winner.status == "synced"
    assert loser.status in {"busy", "syncing", "synced"}


def test_stale_claims_are_recovered_and_synced(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A claim whose heartbeat is older than the timeout is released; a fresh one stays."""
    dead, alive = make_file(user, "dead.txt"), make_file(user, "alive.txt")
    old = utcnow() - timedelta(seconds=app.config["SYNC_STALE_SECONDS"] + 5)
    for fid, beat in ((dead, old), (alive, utcnow())):
        sync.update_sync_status(user, fid, "syncing", claimed_at=beat, heartbeat_at=beat)
    assert sync.recover_stale_claims(user) == 1
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
    again = sync.execute_run(run.id, user)
    assert again is not None and (again.succeeded, again.status) == (1, "done")
    assert len(fake.uploads()) == 1
    db.session.execute(update(SyncRun).values(status="running"))  # as if the worker died
    db.session.commit()
    assert sync.execute_run(run.id, user).succeeded == 1
    assert len(fake.uploads()) == 1


def test_replace_during_upload_leaves_the_file_not_synced(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A file replaced while uploading ends not_synced, and the next run replaces the same item."""
    fid = make_file(user, "report.txt", b"old bytes")

    def replace_now(name: str) -> None:
        fake.during_upload = None
        t = threading.Thread(target=replace_bytes, args=(app, user, fid, b"new bytes!"))
        t.start()
        t.join()

    fake.during_upload = replace_now
    run = sync.request_sync(user)
    f = row(fid)
    assert (f.onedrive_sync_status, f.version) == ("not_synced", 2)
    assert run.total == 0 and run.succeeded == 0 and run.status == "done"
    first_item = f.onedrive_id
    assert first_item is not None
    sync.request_sync(user)
    f = row(fid)
    assert f.onedrive_sync_status == "synced" and f.onedrive_id == first_item
    assert fake.content[first_item] == b"new bytes!"
    assert [c[2] for c in fake.uploads()] == ["fail", "replace"]


def test_new_version_of_synced_file_replaces_the_same_item(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A new local version replaces the OneDrive item we uploaded, when nobody changed it there."""
    fid = make_file(user, "plan.txt", b"v1")
    sync.request_sync(user)
    item = row(fid).onedrive_id
    replace_bytes(app, user, fid, b"v2 longer")
    assert row(fid).onedrive_sync_status == "not_synced"
    sync.request_sync(user)
    f = row(fid)
    assert f.onedrive_sync_status == "synced" and f.onedrive_id == item
    assert fake.content[item] == b"v2 longer" and f.onedrive_etag == fake.items[item]["eTag"]
    assert [c[2] for c in fake.uploads()] == ["fail", "replace"]


def test_both_sides_changed_is_a_conflict(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int]
) -> None:
    """When OneDrive's copy changed too, nothing is uploaded and the file is in conflict."""
    fid = make_conflict(app, fake, user, make_file)
    with app.app_context(), user_scope(user):
        f = row(fid)
        assert "changed since the last sync" in (f.onedrive_error or "")
        assert fake.content[f.onedrive_id] == b"edited on OneDrive"
        run = sync.run_status(user)
        assert run is not None and run.failed == 1
    assert len(fake.uploads()) == 1


def test_only_remote_changed_keeps_onedrive_copy(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A file whose local bytes did not change is not uploaded over someone's OneDrive edit."""
    fid = make_file(user, "a.txt", b"same")
    sync.request_sync(user)
    item = row(fid).onedrive_id
    fake.modify(item, b"their edit")
    sync.update_sync_status(user, fid, "error", onedrive_error="earlier failure")
    sync.request_sync(user)
    f = row(fid)
    assert f.onedrive_sync_status == "synced" and f.onedrive_note == sync.REMOTE_CHANGED_NOTE
    assert fake.content[item] == b"their edit" and len(fake.uploads()) == 1


def test_existing_identical_file_is_adopted_without_upload(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A 409 on first upload adopts OneDrive's file when its quickXorHash equals ours."""
    theirs = fake.add_file("notes.txt", b"hello world")
    fid = make_file(user, "notes.txt", b"hello world")
    sync.request_sync(user)
    f = row(fid)
    assert f.onedrive_sync_status == "synced" and f.onedrive_id == theirs["id"]
    assert fake.items[theirs["id"]]["eTag"] == theirs["eTag"]  # not overwritten
    assert [c[2] for c in fake.uploads()] == ["fail"]


def test_existing_different_file_is_a_conflict(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A 409 on first upload with different bytes never overwrites: the file is in conflict."""
    theirs = fake.add_file("NOTES.txt", b"someone else's")
    fid = make_file(user, "notes.txt", b"mine")
    sync.request_sync(user)
    f = row(fid)
    assert f.onedrive_sync_status == "conflict" and "already in your OneDrive" in f.onedrive_error
    assert fake.content[theirs["id"]] == b"someone else's"


# -- conflict resolution ---------------------------------------------------------------------------


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


# -- errors ----------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "exc",
    [
        InsufficientStorageError("quota"),
        IntegrityError("local==", "remote=="),
        FileTooLargeError(300 * 1024**3, 250 * 1024**3),
        GraphError("denied", status=403, code="accessDenied"),
        GraphError("busy https://x.example/u?tempauth=SECRET", status=503, code="serviceBusy"),
        GraphError("ConnectionError", code="networkError", retryable=True),
    ],
    ids=["quota", "integrity", "too-large", "denied", "retries-exhausted", "network"],
)
def test_upload_failures_become_errors_with_human_reasons(
    app: Flask,
    fake: FakeDrive,
    user: int,
    make_file: Callable[..., int],
    ctx: None,
    exc: GraphError,
) -> None:
    """Each failure kind leaves the file in error with the exception's human sentence."""
    fid = make_file(user)
    fake.fail_uploads(exc)
    run = sync.request_sync(user)
    f = row(fid)
    assert (f.onedrive_sync_status, f.onedrive_error) == ("error", exc.human_message())
    assert "tempauth" not in f.onedrive_error and "http" not in f.onedrive_error
    assert (run.failed, run.succeeded, run.status) == (1, 0, "done")


def test_invalid_onedrive_name_fails_before_any_request(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A name OneDrive forbids goes to error with the rule, without calling OneDrive."""
    fid = make_file(user, "what?.txt")
    sync.request_sync(user)
    f = row(fid)
    assert f.onedrive_sync_status == "error" and "?" in (f.onedrive_error or "")
    assert fake.calls == []


def test_missing_stored_bytes_is_an_error(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A file whose stored bytes vanished fails with a clear reason."""
    fid = make_file(user)
    LocalStorage(app.config["STORAGE_DIR"]).path(row(fid).stored_path).unlink()
    sync.request_sync(user)
    assert row(fid).onedrive_error == sync.MISSING_MESSAGE


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


def test_service_modified_office_file_is_synced_with_a_note(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """An Office file rewritten by OneDrive for Business is synced, with the note saying so."""
    fake.service_modifies = True
    fid = make_file(user, "deck.pptx", b"PK...")
    sync.request_sync(user)
    f = row(fid)
    assert f.onedrive_sync_status == "synced" and f.onedrive_note == sync.SERVICE_MODIFIED_NOTE


def test_large_upload_reports_progress_and_keeps_its_session(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A multi-fragment upload writes bytes_sent and its session while running, then clears it."""
    app.config["UPLOAD_FRAGMENT_MB"] = 5
    seen: list[tuple[str, int, bool]] = []
    fid = make_file(user, "big.bin", b"z" * (5 * MiB + 10))

    def look(name: str) -> None:
        with app.app_context():
            f = db.session.execute(
                db.select(File).where(File.id == fid).options(db.undefer(File.upload_url))
            ).scalar_one()
            seen.append((f.onedrive_sync_status, f.bytes_sent, bool(f.upload_url)))

    fake.during_upload = look
    sync.request_sync(user)
    assert seen == [("syncing", 0, True)]
    f = row(fid)
    assert f.bytes_sent == f.size and f.upload_url is None and f.upload_expires_at is None


# -- reading progress, isolation -------------------------------------------------------------------


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
    connect: Callable[..., None],
    make_file: Callable[..., int],
) -> None:
    """User B cannot request, retry or resolve user A's files: they do not exist for B."""
    fid = make_file(user)
    other = make_user()
    connect(other)
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


def test_claim_is_a_conditional_update(
    app: Flask, user: int, make_file: Callable[..., int]
) -> None:
    """Two sessions that both read a file as not_synced cannot both claim it."""
    fid = make_file(user)
    with app.app_context(), user_scope(user):
        first = db.session.get(File, fid)
        with app.app_context(), user_scope(user):
            second = db.session.get(File, fid)
            assert second is not None and second.onedrive_sync_status == "not_synced"
            assert first is not None and sync._claim(first, ("not_synced",)) is not None
            assert sync._claim(second, ("not_synced",)) is None
            db.session.remove()
        db.session.remove()
