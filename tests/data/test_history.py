"""Per-file sync history: written from the file events, newest first, kept after the file goes."""

from __future__ import annotations

from drivesync import events
from drivesync.extensions import db
from drivesync.scope import user_scope
from drivesync.services import library
from drivesync.services.storage import LocalStorage
from tests.data.conftest import history_rows


def _send(app, signal, uid, fid, **kw) -> None:
    with app.app_context(), user_scope(uid):
        signal.send(None, user_id=uid, file_id=fid, **kw)
        db.session.commit()


def test_history_page_lists_events_newest_first(app, make_user, make_file, signed_in):
    """Upload, sync, failure, conflict and resolution appear on the file's page, newest first."""
    uid = make_user()
    fid = make_file(uid, "blood-test.pdf", b"x" * 2048)  # the library sends file_uploaded
    _send(
        app,
        events.file_synced,
        uid,
        fid,
        item_id="ITEM-1",
        etag="etag-1",
        size=2048,
        replaced=False,
    )
    _send(app, events.file_failed, uid, fid, reason="OneDrive is full", kind="user")
    _send(app, events.file_conflict, uid, fid, reason="changed on both sides")
    _send(app, events.conflict_resolved, uid, fid, action="kept both")
    html = signed_in(uid).get(f"/files/{fid}/history").get_data(as_text=True)
    assert "History of blood-test.pdf" in html
    order = [
        "Conflict resolved: kept both",
        "Conflict with the OneDrive copy",
        "Sync failed: OneDrive is full (user)",
        "Synced to OneDrive (2.0 KB)",
        "Uploaded (2.0 KB)",
    ]
    positions = [html.index(text) for text in order]
    assert positions == sorted(positions)
    assert "ITEM-1" in html and "etag-1" in html
    assert [r.kind for r in history_rows(app, uid, fid)] == [
        "uploaded",
        "synced",
        "failed",
        "conflict",
        "resolved",
    ]


def test_rename_records_old_and_new_names(app, make_user, make_file):
    """A rename keeps both names in the owner's history."""
    uid = make_user()
    fid = make_file(uid, "a.txt")
    _send(app, events.file_renamed, uid, fid, old_name="a.txt", new_name="b.txt")
    (row,) = [r for r in history_rows(app, uid, fid) if r.kind == "renamed"]
    assert (row.kind, row.detail) == ("renamed", "a.txt → b.txt")


def test_history_of_a_deleted_file_stays_and_is_linked_from_activity(
    app, make_user, make_file, signed_in
):
    """After deletion the history page still answers, and Activity lists the deleted file."""
    uid = make_user()
    fid = make_file(uid, "old-scan.png")
    _send(app, events.file_uploaded, uid, fid, size=11)
    with app.app_context(), user_scope(uid):
        events.file_deleted.send(None, user_id=uid, file_id=fid)
        library.delete_file(uid, fid, LocalStorage(app.config["STORAGE_DIR"]))
    client = signed_in(uid)
    page = client.get(f"/files/{fid}/history")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "a deleted file" in html and "Deleted from your library." in html
    activity = client.get("/account/activity").get_data(as_text=True)
    assert "old-scan.png" in activity and f"/files/{fid}/history" in activity


def test_unknown_file_history_is_404(app, make_user, signed_in):
    """A file id with no file and no history answers 404, also past the integer range."""
    uid = make_user()
    client = signed_in(uid)
    assert client.get("/files/999/history").status_code == 404
    assert client.get(f"/files/{2**40}/history").status_code == 404


def test_library_links_each_file_to_its_history(app, make_user, make_file, signed_in):
    """The library table has a History link per file."""
    uid = make_user()
    fid = make_file(uid)
    assert f"/files/{fid}/history" in signed_in(uid).get("/library/").get_data(as_text=True)
