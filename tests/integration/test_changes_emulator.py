"""Changes made in OneDrive, seen through the delta feed of the emulator (over TLS): each remote
change gives the library file its state, and a 410 resync loses and duplicates nothing.
Runs on SQLite and, in the PostgreSQL pass, as the app role under row-level security."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from drivesync.extensions import db
from drivesync.models import File, Integration, RemoteItem
from drivesync.scope import user_scope
from drivesync.services import changes, sync
from drivesync.services.changes import CheckResult
from onedrive_emulator.client import EmulatorAdmin
from tests.conftest import csrf_token
from tests.fixtures_emulator import ALEX, MEGAN

pytestmark = pytest.mark.emulator


def check(app: Flask, uid: int) -> CheckResult:
    """Make a check due now and run it; return what it did."""
    with app.app_context(), user_scope(uid):
        changes.request_check(uid, min_gap=timedelta(0))
        result = changes.check(uid)
        assert result is not None, db.session.execute(
            db.select(Integration.delta_error).where(Integration.user_id == uid)
        ).scalar_one()
        return result


def state(app: Flask, uid: int, fid: int) -> File:
    """Return a fresh copy of the file row."""
    with app.app_context(), user_scope(uid):
        f = db.session.get(File, fid)
        assert f is not None
        db.session.expunge(f)
        return f


def synced_file(app: Flask, client: FlaskClient, uid: int, make_file: Any, name: str) -> int:
    """Add a file and sync it (the eager backend runs the run at once)."""
    fid = int(make_file(uid, name, f"content of {name}".encode()))
    r = client.post("/settings/onedrive/sync", data={"csrf_token": csrf_token(client)})
    assert r.status_code == 303
    assert state(app, uid, fid).onedrive_sync_status == "synced"
    return fid


def test_first_check_enumerates_and_a_quiet_check_costs_one_request(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """Connecting schedules the first check; with nothing changed the next costs one request."""
    fid = synced_file(app, client, alice, make_file, "report.pdf")
    first = check(app, alice)
    assert first.items >= 2 and first.transitions == 0 and first.new_count == 0
    assert state(app, alice, fid).onedrive_sync_status == "synced"
    quiet = check(app, alice)
    assert (quiet.requests, quiet.items, quiet.transitions) == (1, 0, 0)


def test_rename_and_move_inside_the_folder_are_followed(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """Renamed, then moved into a subfolder: still synced, the OneDrive path follows by id."""
    fid = synced_file(app, client, alice, make_file, "scan.pdf")
    check(app, alice)
    emu.rename_item(ALEX, "/drivesync/scan.pdf", "tax scan.pdf")
    check(app, alice)
    f = state(app, alice, fid)
    assert (f.onedrive_sync_status, f.onedrive_name) == ("synced", "tax scan.pdf")
    assert f.onedrive_path == "/drivesync/tax scan.pdf"
    emu.modify_item(ALEX, "/drivesync/2025/keep.txt", b"makes the folder")
    emu.move_item(ALEX, "/drivesync/tax scan.pdf", "/drivesync/2025")
    result = check(app, alice)
    f = state(app, alice, fid)
    assert f.onedrive_sync_status == "synced"
    assert f.onedrive_path == "/drivesync/2025/tax scan.pdf"
    assert result.new_count == 1  # keep.txt is not in the library


def test_edit_in_onedrive_is_remote_changed_and_keep_library_replaces_it(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """Edited there, unchanged here: "OneDrive has a newer version"; keep ours replaces theirs."""
    fid = synced_file(app, client, alice, make_file, "notes.txt")
    check(app, alice)
    emu.modify_item(ALEX, "/drivesync/notes.txt", b"edited on the phone")
    assert check(app, alice).transitions == 1
    f = state(app, alice, fid)
    assert f.onedrive_sync_status == "remote_changed"
    assert f.onedrive_error == changes.REMOTE_CHANGED_MESSAGE
    with app.app_context(), user_scope(alice):
        sync.keep_library_version(alice, fid)
    f = state(app, alice, fid)
    assert f.onedrive_sync_status == "synced"
    [item] = [i for i in emu.list_items(ALEX) if i["name"] == "notes.txt"]
    assert item["quickXorHash"] == f.quick_xor_hash
    assert check(app, alice).transitions == 0  # our own upload is not a remote edit


def test_edit_on_both_sides_is_a_conflict(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """Replaced here (not yet synced) and edited there: a conflict with today's choices."""
    fid = synced_file(app, client, alice, make_file, "plan.txt")
    check(app, alice)
    with app.app_context(), user_scope(alice):
        db.session.execute(
            db.update(File)
            .where(File.id == fid)
            .values(
                onedrive_sync_status="not_synced", content_hash="0" * 64, quick_xor_hash="x" * 27
            )
        )
        db.session.commit()
    emu.modify_item(ALEX, "/drivesync/plan.txt", b"edited there")
    check(app, alice)
    assert state(app, alice, fid).onedrive_sync_status == "conflict"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("ask", "remote_deleted"), ("upload", "not_synced"), ("keep", "local_only")],
)
def test_delete_in_onedrive_follows_the_policy(
    app: Flask,
    client: FlaskClient,
    alice: int,
    make_file: Any,
    emu: EmulatorAdmin,
    policy: str,
    expected: str,
) -> None:
    """Deleted there: ask (Deleted in OneDrive), upload again, or keep only in the library."""
    fid = synced_file(app, client, alice, make_file, "old.txt")
    check(app, alice)
    with app.app_context(), user_scope(alice):
        changes.set_policy(alice, policy)
    emu.delete_item(ALEX, "/drivesync/old.txt")
    check(app, alice)
    f = state(app, alice, fid)
    assert f.onedrive_sync_status == expected
    assert (f.onedrive_id is None) == (policy != "ask")
    with app.app_context(), user_scope(alice):
        assert db.session.get(File, fid) is not None  # nothing deleted in the library


def test_moved_out_of_the_folder_is_deleted_there_and_upload_again_restores_it(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """Moved out of the sync folder reads as deleted; Upload again puts a new copy back."""
    fid = synced_file(app, client, alice, make_file, "away.txt")
    check(app, alice)
    emu.move_item(ALEX, "/drivesync/away.txt", "/")
    check(app, alice)
    assert state(app, alice, fid).onedrive_sync_status == "remote_deleted"
    with app.app_context(), user_scope(alice):
        sync.upload_again(alice, fid)
        assert db.session.get(File, fid).onedrive_sync_status == "not_synced"
    r = client.post("/settings/onedrive/sync", data={"csrf_token": csrf_token(client)})
    assert r.status_code == 303
    assert state(app, alice, fid).onedrive_sync_status == "synced"
    names = [i["path"] for i in emu.list_items(ALEX) if i["name"] == "away.txt"]
    assert sorted(names) == ["/away.txt", "/drivesync/away.txt"]  # theirs untouched, ours back


def test_a_410_resync_loses_and_duplicates_nothing(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """An expired token: enumerate again and reconcile; the mirror holds each item once."""
    a = synced_file(app, client, alice, make_file, "a.txt")
    b = synced_file(app, client, alice, make_file, "b.txt")
    check(app, alice)
    emu.delete_item(ALEX, "/drivesync/a.txt")
    emu.rename_item(ALEX, "/drivesync/b.txt", "b2.txt")
    emu.modify_item(ALEX, "/drivesync/new.txt", b"from elsewhere")
    emu.delta_gone("resyncChangesApplyDifferences")
    result = check(app, alice)
    assert result.resynced
    assert state(app, alice, a).onedrive_sync_status == "remote_deleted"
    fb = state(app, alice, b)
    assert (fb.onedrive_sync_status, fb.onedrive_name) == ("synced", "b2.txt")
    assert result.new_count == 1
    with app.app_context(), user_scope(alice):
        ids = list(db.session.execute(db.select(RemoteItem.item_id)).scalars())
    assert len(ids) == len(set(ids))
    live = {i["id"] for i in emu.list_items(ALEX) if i["path"].startswith("/drivesync")}
    assert set(ids) - live <= set()  # nothing the drive no longer has
    assert check(app, alice).transitions == 0


def test_upload_differences_resync_makes_differences_conflicts(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """resyncChangesUploadDifferences: OneDrive is unsure which side is newer, so both are kept."""
    fid = synced_file(app, client, alice, make_file, "unsure.txt")
    check(app, alice)
    emu.modify_item(ALEX, "/drivesync/unsure.txt", b"theirs")
    emu.delta_gone("resyncChangesUploadDifferences")
    check(app, alice)
    f = state(app, alice, fid)
    assert f.onedrive_sync_status == "conflict"
    assert f.onedrive_error == changes.UNSURE_MESSAGE


def test_new_files_are_counted_and_known_to_browse(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """Files that appear in the folder from elsewhere are counted, and marked by id."""
    synced_file(app, client, alice, make_file, "mine.txt")
    one = emu.modify_item(ALEX, "/drivesync/photo1.jpg", b"1")
    two = emu.modify_item(ALEX, "/drivesync/photo2.jpg", b"2")
    assert check(app, alice).new_count == 2
    with app.app_context(), user_scope(alice):
        assert changes.untracked_item_ids(alice, [one["id"], two["id"], "nope"]) == {
            one["id"],
            two["id"],
        }
        status = changes.status(alice)
        assert status is not None and status.new_count == 2 and status.mode == "polling"


def test_replacing_a_file_onedrive_changed_makes_a_conflict(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """OneDrive has a newer version and the user uploads another here: both sides changed."""
    fid = synced_file(app, client, alice, make_file, "draft.txt")
    check(app, alice)
    emu.modify_item(ALEX, "/drivesync/draft.txt", b"theirs")
    check(app, alice)
    r = client.post(
        f"/library/{fid}/replace",
        data={"csrf_token": csrf_token(client), "file": (io.BytesIO(b"ours, newer"), "draft.txt")},
        content_type="multipart/form-data",
    )
    assert r.status_code in (302, 303)
    f = state(app, alice, fid)
    assert (f.onedrive_sync_status, f.onedrive_error) == ("conflict", changes.BOTH_CHANGED_MESSAGE)


def test_a_renamed_subfolder_moves_the_paths_of_the_files_below_it(
    app: Flask, client: FlaskClient, alice: int, make_file: Any, emu: EmulatorAdmin
) -> None:
    """A subfolder renamed in OneDrive: its files stay synced and read their new path (Graph
    returns the folder, not its unchanged descendants)."""
    fid = synced_file(app, client, alice, make_file, "x-ray.pdf")
    emu.modify_item(ALEX, "/drivesync/scans/keep.txt", b"makes the folder")
    check(app, alice)
    emu.move_item(ALEX, "/drivesync/x-ray.pdf", "/drivesync/scans")
    check(app, alice)
    assert state(app, alice, fid).onedrive_path == "/drivesync/scans/x-ray.pdf"
    emu.rename_item(ALEX, "/drivesync/scans", "2026 scans")
    check(app, alice)
    f = state(app, alice, fid)
    assert (f.onedrive_sync_status, f.onedrive_path) == (
        "synced",
        "/drivesync/2026 scans/x-ray.pdf",
    )


def test_a_business_drive_is_read_from_its_root_and_only_the_folder_counts(
    app: Flask,
    client: FlaskClient,
    make_user: Callable[..., int],
    login: Callable[[int], None],
    connect: Any,
    make_file: Any,
    emu: EmulatorAdmin,
) -> None:
    """Work or school: root delta (documented there), the rest of the drive ignored, moves out
    of the folder (a file, or a whole subfolder) read as deletions."""
    uid = make_user("bob@example.com")
    login(uid)
    assert connect(MEGAN).status_code == 303
    fid = synced_file(app, client, uid, make_file, "contract.pdf")
    emu.modify_item(MEGAN, "/elsewhere/private.txt", b"not ours")
    emu.modify_item(MEGAN, "/drivesync/sub/inner.txt", b"inside")
    first = check(app, uid)
    assert first.new_count == 1  # inner.txt; private.txt is outside the sync folder
    log = [r["path"] for r in emu.requests_log() if r["path"].endswith("/delta")]
    assert log and all("/root/delta" in p for p in log)
    emu.move_item(MEGAN, "/drivesync/contract.pdf", "/elsewhere")
    emu.move_item(MEGAN, "/drivesync/sub", "/elsewhere")
    result = check(app, uid)
    assert state(app, uid, fid).onedrive_sync_status == "remote_deleted"
    assert result.new_count == 0  # inner.txt left with its folder
    with app.app_context(), user_scope(uid):
        names = set(db.session.execute(db.select(RemoteItem.name)).scalars())
    assert "private.txt" not in names and "inner.txt" not in names
