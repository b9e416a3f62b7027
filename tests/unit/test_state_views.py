"""The pages and actions of the states issue 11 adds: badges, sentences, actions, policy, dashboard.

The actions are delta's (``services/sync.py``, ``services/changes.py``); these tests check that
the views call them, answer htmx and plain forms, and show what they changed.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from drivesync.extensions import db
from drivesync.models import File, Integration, utcnow
from drivesync.scope import user_scope
from drivesync.services import changes
from tests.conftest import csrf_token, db_rows
from tests.fakes import FakeDrive

HX = {"HX-Request": "true"}
# Where each action leaves the file (Keep the library's version runs at once: eager backend).
AFTER = {
    "keep_library_version": "synced",
    "upload_again": "not_synced",
    "keep_only_in_library": "local_only",
}
MESSAGE = {
    "keep_library_version": "The library&#39;s version is being uploaded",
    "upload_again": "f.pdf goes to OneDrive with the next sync.",
    "keep_only_in_library": "f.pdf is kept only in the library.",
}
ACTIONS = {
    "keep-library-version": "keep_library_version",
    "upload-again": "upload_again",
    "keep-only-in-library": "keep_only_in_library",
}


@pytest.fixture
def app_overrides(fake: FakeDrive) -> dict[str, Any]:
    """Runs (Keep the library's version) go to an in-memory drive."""
    return {"SYNC_DRIVE_FACTORY": lambda user_id: fake}


@pytest.fixture
def alice(make_user, login, link_onedrive) -> int:
    """A signed-in, connected user (folder /drivesync)."""
    uid = make_user("alice@example.com")
    link_onedrive(uid, folder_path="drivesync")
    login(uid)
    return uid


def set_file(app, uid: int, fid: int, **values: Any) -> None:
    """Write columns of a file directly (test set-up)."""
    with app.app_context(), user_scope(uid):
        db.session.execute(update(File).where(File.id == fid).values(**values))
        db.session.commit()


def library_row(html: str, fid: int) -> str:
    """Return the library table row of file ``fid``."""
    m = re.search(rf'<tr id="file-{fid}">(.*?)</tr>', html, re.S)
    assert m, f"no row for file {fid}"
    return m.group(1)


def test_library_shows_each_new_state_with_its_sentence_and_actions(app, client, alice, make_file):
    """remote_changed, remote_deleted and local_only: badge, sentence, the right buttons."""
    changed = make_file(alice, "changed.pdf", b"c")
    deleted = make_file(alice, "deleted.pdf", b"d")
    local = make_file(alice, "local.pdf", b"l")
    set_file(app, alice, changed, onedrive_sync_status="remote_changed", onedrive_id="i1")
    set_file(app, alice, deleted, onedrive_sync_status="remote_deleted", onedrive_id="i2")
    set_file(app, alice, local, onedrive_sync_status="local_only")
    html = client.get("/library/").get_data(as_text=True)

    row = library_row(html, changed)
    assert "newer in OneDrive" in row and "OneDrive has a newer version." in row
    assert f"/settings/onedrive/files/{changed}/import-version" in row
    assert "Import OneDrive&#39;s version" in row and "Keep the library&#39;s version" in row
    row = library_row(html, deleted)
    assert "Deleted in OneDrive." in row
    assert "Upload again" in row and "Keep only in the library" in row
    row = library_row(html, local)
    assert "Kept only in the library." in row and "Upload again" in row
    assert "Keep only in the library" not in row


def test_a_file_renamed_or_moved_in_onedrive_says_where_it_is(app, client, alice, make_file):
    """A synced file whose OneDrive path is not the library's name in the folder says so."""
    renamed = make_file(alice, "report.pdf", b"r")
    moved = make_file(alice, "scan.pdf", b"s")
    same = make_file(alice, "same.pdf", b"x")
    for fid, name, path in (
        (renamed, "report-final.pdf", "/drivesync/report-final.pdf"),
        (moved, "scan.pdf", "/drivesync/2026/scan.pdf"),
        (same, "same.pdf", "/drivesync/same.pdf"),
    ):
        set_file(app, alice, fid, onedrive_sync_status="synced", onedrive_name=name,
                 onedrive_path=path)  # fmt: skip
    html = client.get("/library/").get_data(as_text=True)
    assert "in OneDrive as /drivesync/report-final.pdf" in library_row(html, renamed)
    assert "in OneDrive as /drivesync/2026/scan.pdf" in library_row(html, moved)
    assert "in OneDrive as" not in library_row(html, same)


def test_settings_list_offers_the_actions_and_dashboard_says_when_checked(
    app, client, alice, make_file, monkeypatch
):
    """The settings page lists the new states with actions swapping #pending; the dashboard
    says when and how OneDrive is checked and how many new files the folder has."""
    fid = make_file(alice, "deleted.pdf", b"d")
    set_file(app, alice, fid, onedrive_sync_status="remote_deleted", onedrive_id="i2")
    with app.app_context(), user_scope(alice):
        db.session.execute(
            update(Integration).values(
                delta_checked_at=utcnow() - timedelta(minutes=3), remote_new_count=3
            )
        )
        db.session.commit()
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    m = re.search(rf'<tr id="pending-{fid}".*?</tr>', html, re.S)
    assert m and "Deleted in OneDrive." in m.group(0)
    action = f'hx-post="/settings/onedrive/files/{fid}/upload-again" hx-target="#pending"'
    assert action in m.group(0)
    assert "OneDrive last checked" in html and "3 minutes ago" in html
    assert "(every 15 minutes)" in html
    link = '<a href="/settings/onedrive/browse">3 new files in your OneDrive folder</a>'
    assert link in html
    real = changes.status

    def live(user_id: int) -> Any:
        return replace(real(user_id), mode="live", new_count=1)

    monkeypatch.setattr(changes, "status", live)
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "(live updates)" in html and "1 new file in your OneDrive folder" in html


def test_opening_settings_requests_a_check(app, client, alice):
    """The settings page makes a delta check due (request_check, at most once a minute)."""
    client.get("/settings/onedrive/")
    [i] = db_rows(app, Integration, alice)
    assert i.delta_due_at is not None


@pytest.mark.parametrize(("path", "attr"), ACTIONS.items())
def test_each_action_answers_htmx_with_the_list(app, client, alice, make_file, path, attr):
    """Each action calls its service and answers the refreshed list (htmx) or a redirect."""
    fid = make_file(alice, "f.pdf", b"f")
    start = "remote_changed" if attr == "keep_library_version" else "remote_deleted"
    set_file(app, alice, fid, onedrive_sync_status=start, onedrive_id="i1")
    token = csrf_token(client)
    r = client.post(
        f"/settings/onedrive/files/{fid}/{path}", data={"csrf_token": token}, headers=HX
    )
    assert r.status_code == 200 and "HX-Retarget" not in r.headers
    assert 'id="pending"' in r.get_data(as_text=True)
    [f] = db_rows(app, File, alice)
    assert f.onedrive_sync_status == AFTER[attr]
    # Once applied, the same action is refused in the flash area (never a 4xx for htmx).
    r = client.post(
        f"/settings/onedrive/files/{fid}/{path}", data={"csrf_token": token}, headers=HX
    )
    assert r.status_code == 200 and r.headers["HX-Retarget"] == "#flashes"


@pytest.mark.parametrize(("path", "attr"), ACTIONS.items())
def test_each_action_from_the_library_goes_back_there(app, client, alice, make_file, path, attr):
    """From the library (a ``next`` field) the answer is HX-Redirect back, with a message."""
    fid = make_file(alice, "f.pdf", b"f")
    start = "remote_changed" if attr == "keep_library_version" else "remote_deleted"
    set_file(app, alice, fid, onedrive_sync_status=start, onedrive_id="i1")
    r = client.post(
        f"/settings/onedrive/files/{fid}/{path}",
        data={"csrf_token": csrf_token(client), "next": "/library/?sort=name"},
        headers=HX,
    )
    assert r.status_code == 204 and r.headers["HX-Redirect"] == "/library/?sort=name"
    html = client.get("/library/").get_data(as_text=True)
    assert MESSAGE[attr] in html
    [f] = db_rows(app, File, alice)
    assert f.onedrive_sync_status == AFTER[attr]


@pytest.mark.parametrize("path", [*ACTIONS, "import-version"])
def test_actions_need_csrf_and_hide_others_files(app, client, alice, make_user, make_file, path):
    """No CSRF token: refused. Another user's file: 404 (htmx: the message, 200)."""
    bob = make_user("bob@example.com")
    theirs = make_file(bob, "theirs.pdf", b"t")
    set_file(app, bob, theirs, onedrive_sync_status="remote_deleted", onedrive_id="i9")
    r = client.post(f"/settings/onedrive/files/{theirs}/{path}", data={})
    assert r.status_code == 400
    r = client.post(f"/settings/onedrive/files/{theirs}/{path}", data={}, headers=HX)
    assert r.status_code == 200 and r.headers["HX-Retarget"] == "#flashes"
    token = csrf_token(client)
    r = client.post(f"/settings/onedrive/files/{theirs}/{path}", data={"csrf_token": token})
    assert r.status_code == 404
    [f] = db_rows(app, File, bob)
    assert f.onedrive_sync_status == "remote_deleted"


def test_policy_form_saves_with_csrf(app, client, alice):
    """The policy form shows the current choice, needs CSRF and refuses unknown values."""
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert re.search(r'name="policy" value="ask" checked', html)
    assert client.post("/settings/onedrive/policy", data={"policy": "keep"}).status_code == 400
    token = csrf_token(client)
    r = client.post("/settings/onedrive/policy", data={"csrf_token": token, "policy": "delete"})
    assert r.status_code == 400
    r = client.post("/settings/onedrive/policy", data={"csrf_token": token, "policy": "keep"})
    assert r.status_code == 303
    [i] = db_rows(app, Integration, alice)
    assert i.remote_policy == "keep"
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "Files deleted in OneDrive will be kept only in the library." in html
