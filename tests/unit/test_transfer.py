"""One file's transfer (services/transfer.py) on FakeDrive: states, reconciliation, errors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from drivesync import events
from drivesync.extensions import db
from drivesync.graph.errors import (
    FileTooLargeError,
    GraphError,
    InsufficientStorageError,
    IntegrityError,
)
from drivesync.models import File, utcnow
from drivesync.scope import user_scope
from drivesync.services import runs, sync, transfer
from drivesync.services.storage import LocalStorage
from tests.fakes import FOLDER_ID, FakeDrive
from tests.unit.engine_helpers import MiB, make_conflict, replace_bytes, row


@pytest.fixture
def app_overrides(fake: FakeDrive) -> dict[str, Any]:
    """Point the engine at the fake drive."""
    return {"SYNC_DRIVE_FACTORY": lambda user_id: fake, "SYNC_CONCURRENCY": 4}


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
    outcomes: list[transfer.SyncOutcome] = []

    def worker() -> None:
        with app.app_context(), user_scope(user):
            barrier.wait()
            outcomes.append(transfer.sync_file(fid, user, fake, folder_id=FOLDER_ID))
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
    assert f.onedrive_sync_status == "synced" and f.onedrive_note == transfer.REMOTE_CHANGED_NOTE
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
    assert row(fid).onedrive_error == transfer.MISSING_MESSAGE


def test_service_modified_office_file_is_synced_with_a_note(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """An Office file rewritten by OneDrive for Business is synced, with the note saying so."""
    fake.service_modifies = True
    fid = make_file(user, "deck.pptx", b"PK...")
    sync.request_sync(user)
    f = row(fid)
    assert f.onedrive_sync_status == "synced" and f.onedrive_note == transfer.SERVICE_MODIFIED_NOTE


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
            assert first is not None and transfer._claim(first, ("not_synced",)) is not None
            assert transfer._claim(second, ("not_synced",)) is None
            db.session.remove()
        db.session.remove()


def test_results_are_announced_as_domain_events(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A synced, a failed and a conflicted file each send their event, with plain values only."""
    heard: list[tuple[str, dict[str, Any]]] = []

    def hear(name: str) -> Callable[..., None]:
        return lambda sender, **kw: heard.append((name, kw))

    receivers = {name: hear(name) for name in ("file_synced", "file_failed", "file_conflict")}
    for name, receiver in receivers.items():
        getattr(events, name).connect(receiver)
    try:
        ok = make_file(user, "ok.txt", b"ok")
        sync.request_sync(user)
        fake.fail_uploads(GraphError("busy", status=503, code="serviceBusy"), 1)
        bad = make_file(user, "bad.txt", b"bad")
        sync.request_sync(user)
        fake.add_file("clash.txt", b"theirs")
        clash = make_file(user, "clash.txt", b"ours")
        sync.request_sync(user)
    finally:
        for name, receiver in receivers.items():
            getattr(events, name).disconnect(receiver)
    # The third Sync All also retries bad.txt, which then succeeds.
    assert sorted((n, kw["file_id"]) for n, kw in heard) == [
        ("file_conflict", clash),
        ("file_failed", bad),
        ("file_synced", ok),
        ("file_synced", bad),
    ]
    by_event = {(n, kw["file_id"]): kw for n, kw in heard}
    synced, failed = by_event["file_synced", ok], by_event["file_failed", bad]
    conflict = by_event["file_conflict", clash]
    assert synced["item_id"] == row(ok).onedrive_id and synced["replaced"] is False
    assert failed["kind"] == "transient" and "busy" in failed["reason"]
    assert "clash.txt" in conflict["reason"]


def test_heartbeat_beats_while_one_fragment_is_slow(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A claim stays alive through an upload longer than the stale timeout (no progress at all)."""
    app.config["SYNC_STALE_SECONDS"] = 0.6  # beats every 0.2 s
    fid = make_file(user, "slow.bin", b"s" * 1000)
    beats: list[Any] = []
    recovered: list[int] = []

    def heartbeat() -> Any:
        return db.session.execute(db.select(File.heartbeat_at).where(File.id == fid)).scalar_one()

    def slow(name: str) -> None:
        beats.append(heartbeat())
        for _ in range(4):  # 1.2 s: twice the stale timeout, with no progress report
            threading.Event().wait(0.3)
            beats.append(heartbeat())
            recovered.append(transfer.recover_stale_claims(user))

    fake.during_upload = slow
    run = sync.request_sync(user)
    assert run.succeeded == 1 and row(fid).onedrive_sync_status == "synced"
    assert recovered == [0, 0, 0, 0]
    assert len(set(beats)) >= 4 and beats == sorted(beats)


def test_abandoned_upload_resumes_its_stored_session(
    app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int], ctx: None
) -> None:
    """A worker killed mid-upload leaves session and acknowledged offset; the next run resumes."""
    app.config["UPLOAD_FRAGMENT_MB"] = 1
    fid = make_file(user, "big.bin", b"b" * (3 * MiB + 5))
    fake.kill_after = 2  # the worker dies once OneDrive has acknowledged two fragments
    first = sync.request_sync(user)
    f = row(fid)
    assert (f.onedrive_sync_status, f.bytes_sent) == ("syncing", 2 * MiB)
    assert f.upload_url == fake.sessions[0]
    # The run is left running, as a killed process leaves it (its file is still claimed).
    assert first.status == "running"
    db.session.execute(
        update(File).where(File.id == fid).values(heartbeat_at=utcnow() - timedelta(hours=1))
    )  # the dead worker's heartbeat stopped long ago
    db.session.commit()
    run = runs.execute_run(first.id, user)  # the scheduler's requeue: recovers, takes it again
    assert run is not None and run.succeeded == 1 and row(fid).onedrive_sync_status == "synced"
    assert fake.resumes == [None, fake.sessions[0]] and len(fake.sessions) == 1
