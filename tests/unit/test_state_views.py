"""The pages and actions of the states issue 11 adds: badges, sentences, actions, policy, dashboard.

Delta's functions (``changes.status``/``untracked_item_ids``/``set_policy`` and the three file
actions of ``services/sync.py``) are replaced here by minimal stand-ins that record their calls,
so these tests check the views and templates, not delta's engine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update

from drivesync.extensions import db
from drivesync.models import File, Integration, utcnow
from drivesync.scope import user_scope
from drivesync.services import changes, sync
from drivesync.services.errors import Conflict, NotFound
from tests.conftest import csrf_token, db_rows

HX = {"HX-Request": "true"}
ACTIONS = {
    "keep-library-version": "keep_library_version",
    "upload-again": "upload_again",
    "keep-only-in-library": "keep_only_in_library",
}


@pytest.fixture
def delta(monkeypatch, app) -> SimpleNamespace:
    """Stand-ins for delta's functions (until delta is merged); they record their calls."""
    rec = SimpleNamespace(
        calls=[],
        status=SimpleNamespace(
            checked_at=utcnow() - timedelta(minutes=3),
            mode="polling",
            interval_seconds=900,
            new_count=3,
            error=None,
            due=None,
        ),
        new_ids=set(),
    )

    def action(name: str, to: str, allowed: tuple[str, ...]) -> Callable[[int, int], None]:
        def run(user_id: int, file_id: int) -> None:
            rec.calls.append((name, user_id, file_id))
            f = db.session.get(File, file_id)
            if f is None or f.owner_id != user_id:
                raise NotFound("That file does not exist.")
            if f.onedrive_sync_status not in allowed:
                raise Conflict("That file is not in a state this applies to.")
            db.session.execute(
                update(File).where(File.id == file_id).values(onedrive_sync_status=to)
            )
            db.session.commit()

        return run

    def set_policy(user_id: int, policy: str) -> None:
        rec.calls.append(("set_policy", user_id, policy))

    monkeypatch.setattr(changes, "status", lambda uid: rec.status, raising=False)
    monkeypatch.setattr(
        changes, "untracked_item_ids", lambda uid, ids: rec.new_ids & set(ids), raising=False
    )
    monkeypatch.setattr(changes, "set_policy", set_policy, raising=False)
    for attr, to, allowed in (
        ("keep_library_version", "not_synced", ("remote_changed",)),
        ("upload_again", "not_synced", ("remote_deleted", "local_only")),
        ("keep_only_in_library", "local_only", ("remote_deleted",)),
    ):
        monkeypatch.setattr(sync, attr, action(attr, to, allowed), raising=False)
    return rec


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


def test_library_shows_each_new_state_with_its_sentence_and_actions(
    app, client, alice, make_file, delta
):
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
    app, client, alice, make_file, delta
):
    """The settings page lists the new states with actions swapping #pending; the dashboard
    says when and how OneDrive is checked and how many new files the folder has."""
    fid = make_file(alice, "deleted.pdf", b"d")
    set_file(app, alice, fid, onedrive_sync_status="remote_deleted", onedrive_id="i2")
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    m = re.search(rf'<tr id="pending-{fid}".*?</tr>', html, re.S)
    assert m and "Deleted in OneDrive." in m.group(0)
    assert f'hx-post="/settings/onedrive/files/{fid}/upload-again" hx-target="#pending"' in m.group(
        0
    )
    assert "OneDrive last checked" in html and "3 minutes ago" in html
    assert "(every 15 minutes)" in html
    assert re.search(
        r'<a href="/settings/onedrive/browse">3 new files in your OneDrive folder</a>', html
    )
    delta.status.mode, delta.status.new_count = "live", 1
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "(live updates)" in html and "1 new file in your OneDrive folder" in html


def test_opening_settings_requests_a_check(app, client, alice, delta):
    """The settings page makes a delta check due (request_check, at most once a minute)."""
    client.get("/settings/onedrive/")
    [i] = db_rows(app, Integration, alice)
    assert i.delta_due_at is not None


@pytest.mark.parametrize(("path", "attr"), ACTIONS.items())
def test_each_action_answers_htmx_with_the_list(app, client, alice, make_file, delta, path, attr):
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
    assert delta.calls == [(attr, alice, fid)]
    # Once applied, the same action is refused in the flash area (never a 4xx for htmx).
    r = client.post(
        f"/settings/onedrive/files/{fid}/{path}", data={"csrf_token": token}, headers=HX
    )
    assert r.status_code == 200 and r.headers["HX-Retarget"] == "#flashes"


@pytest.mark.parametrize(("path", "attr"), ACTIONS.items())
def test_each_action_from_the_library_goes_back_there(
    app, client, alice, make_file, delta, path, attr
):
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
    assert "f.pdf: " in html


@pytest.mark.parametrize("path", [*ACTIONS, "import-version"])
def test_actions_need_csrf_and_hide_others_files(
    app, client, alice, make_user, make_file, delta, path
):
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


def test_policy_form_saves_with_csrf(app, client, alice, delta):
    """The policy form shows the current choice, needs CSRF and refuses unknown values."""
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert re.search(r'name="policy" value="ask" checked', html)
    assert client.post("/settings/onedrive/policy", data={"policy": "keep"}).status_code == 400
    token = csrf_token(client)
    r = client.post("/settings/onedrive/policy", data={"csrf_token": token, "policy": "delete"})
    assert r.status_code == 400
    r = client.post("/settings/onedrive/policy", data={"csrf_token": token, "policy": "keep"})
    assert r.status_code == 303
    assert ("set_policy", alice, "keep") in delta.calls
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "Files deleted in OneDrive will be kept only in the library." in html
