"""The file library: upload, list, download, replace, delete, isolation."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from drivesync import events
from drivesync.extensions import db
from drivesync.graph.names import MAX_FILE_SIZE
from drivesync.graph.quickxor import QuickXorHash
from drivesync.models import File, Integration
from drivesync.scope import user_scope
from drivesync.services import library
from drivesync.services.errors import NotFound, ValidationError
from tests.conftest import csrf_token, db_rows, upload_payload


@pytest.fixture
def alice(make_user, login):
    """A signed-in user."""
    uid = make_user("alice@example.com")
    login(uid)
    return uid


def stored_files(app) -> list[Path]:
    """Return the byte files in storage (not the incoming folder)."""
    root = Path(app.config["STORAGE_DIR"])
    return sorted(p for p in root.glob("*") if p.is_file()) if root.exists() else []


def incoming_files(app) -> list[Path]:
    """Return leftover incoming files."""
    root = Path(app.config["STORAGE_DIR"]) / ".incoming"
    return sorted(root.glob("*")) if root.exists() else []


def test_upload_many_files(client, app, alice):
    """A multi-file upload stores every file with size, MIME type and both hashes."""
    payload = [("report.pdf", b"%PDF-1.7 hello"), ("photo.jpg", b"\xff\xd8\xff" + b"x" * 5000)]
    r = client.post("/library/upload", data=upload_payload(payload, csrf_token(client)))
    assert r.status_code == 303
    rows = sorted(db_rows(app, File, alice), key=lambda f: f.original_name)
    assert [f.original_name for f in rows] == ["photo.jpg", "report.pdf"]
    for f, (_, data) in zip(rows, sorted(payload), strict=True):
        assert f.size == len(data)
        assert f.content_hash == hashlib.sha256(data).hexdigest()
        assert f.quick_xor_hash == QuickXorHash(data).b64digest()
        assert f.onedrive_sync_status == "not_synced"
        assert f.owner_id == alice
        assert (Path(app.config["STORAGE_DIR"]) / f.stored_path).read_bytes() == data
    assert {f.mime_type for f in rows} == {"application/pdf", "image/jpeg"}
    assert incoming_files(app) == []


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:/Users/x/win.ini", "win.ini"),
        ("con.txt", "con.txt"),
        ("Überweisung 2024 – ✓.pdf", "Überweisung 2024 – ✓.pdf"),
        ("a\x07b\u202e.txt", "ab.txt"),
        ("x" * 300 + ".txt", "x" * 251 + ".txt"),
    ],
)
def test_upload_hostile_names(client, app, alice, name, shown):
    """Hostile or odd names are kept for display only; bytes live under a generated name."""
    r = client.post("/library/upload", data=upload_payload([(name, b"data")], csrf_token(client)))
    assert r.status_code == 303
    [f] = db_rows(app, File, alice)
    assert f.original_name == shown
    assert len(f.stored_path) == 32 and f.stored_path.isalnum()
    assert [p.name for p in stored_files(app)] == [f.stored_path]
    assert not (Path(app.config["STORAGE_DIR"]).parent / "etc").exists()


@pytest.mark.parametrize("name", ["..", ".", "\x00\x01"])
def test_upload_unusable_name_refused(client, app, alice, name):
    """A name with nothing usable in it is refused and leaves no bytes behind."""
    r = client.post(
        "/library/upload",
        data=upload_payload([(name, b"data")], csrf_token(client)),
        follow_redirects=True,
    )
    assert "no usable name" in r.get_data(as_text=True)
    assert db_rows(app, File, alice) == []
    assert stored_files(app) == [] and incoming_files(app) == []


def test_upload_zero_bytes(client, app, alice):
    """A zero-byte file is a valid file."""
    client.post("/library/upload", data=upload_payload([("empty.txt", b"")], csrf_token(client)))
    [f] = db_rows(app, File, alice)
    assert f.size == 0
    assert f.quick_xor_hash == QuickXorHash(b"").b64digest()


def test_upload_nothing_chosen(client, alice):
    """Submitting the form without a file gives a clear 400."""
    r = client.post("/library/upload", data={"csrf_token": csrf_token(client)})
    assert r.status_code == 400
    assert "Choose at least one file" in r.get_data(as_text=True)


@pytest.mark.parametrize("app_overrides", [{"MAX_UPLOAD_MB": 1}])
def test_upload_too_large(client, app, alice):
    """A request over the size limit gets the 413 page and stores nothing."""
    token = csrf_token(client)
    # Keep the body under the test client's 500 KB spool threshold: above it, werkzeug's test
    # client leaks its temporary file when the server stops reading early.
    app.config["MAX_CONTENT_LENGTH"] = 100_000
    big = b"a" * 200_000
    r = client.post("/library/upload", data=upload_payload([("big.bin", big)], token))
    assert r.status_code == 413
    assert "File too large" in r.get_data(as_text=True)
    assert db_rows(app, File, alice) == []
    assert stored_files(app) == [] and incoming_files(app) == []


def test_upload_without_csrf_leaves_nothing(client, app, alice):
    """A forged upload (no token) is refused and its streamed bytes are removed."""
    r = client.post("/library/upload", data={"files": [(io.BytesIO(b"x" * 100), "a.txt")]})
    assert r.status_code == 400
    assert db_rows(app, File, alice) == []
    assert stored_files(app) == [] and incoming_files(app) == []


def test_list_sort_and_paginate(client, app, alice, make_file):
    """The list sorts by name, size and date and pages through the files."""
    app.config["PAGE_SIZE"] = 2
    for name, size in [("b.txt", 30), ("a.txt", 10), ("c.txt", 20)]:
        make_file(alice, name, b"x" * size)
    html = client.get("/library/?sort=name").get_data(as_text=True)
    assert html.index("a.txt") < html.index("b.txt") and "c.txt" not in html
    assert "Page 1 of 2" in html
    html = client.get("/library/?sort=name&page=2").get_data(as_text=True)
    assert "c.txt" in html and "a.txt" not in html
    html = client.get("/library/?sort=-size").get_data(as_text=True)
    assert html.index("b.txt") < html.index("c.txt")
    html = client.get("/library/?sort=bogus&page=999").get_data(as_text=True)
    assert "Page 2 of 2" in html
    r = client.get("/library/?sort=size", headers={"HX-Request": "true", "HX-Target": "library"})
    assert "<html" not in r.get_data(as_text=True) and "HX-Request" in r.headers["Vary"]


def test_download_headers(client, app, alice, make_file):
    """Downloads are attachments with an RFC 5987 name, the stored bytes and nosniff."""
    fid = make_file(alice, "Überweisung <2024>.html", b"<script>alert(1)</script>")
    r = client.get(f"/library/{fid}/download")
    body = r.get_data()
    r.close()  # the body is a file wrapper
    assert r.status_code == 200
    assert body == b"<script>alert(1)</script>"
    cd = r.headers["Content-Disposition"]
    assert cd.startswith("attachment;")
    assert "filename*=UTF-8''%C3%9Cberweisung%20%3C2024%3E.html" in cd
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" in r.headers["Cache-Control"]


def test_listing_escapes_names(client, alice, make_file):
    """A file name with markup is rendered escaped."""
    make_file(alice, "<img src=x onerror=alert(1)>.txt")
    html = client.get("/library/").get_data(as_text=True)
    assert "<img src=x" not in html and "&lt;img src=x" in html


def test_replace_resets_synced(client, app, alice, make_file):
    """Replacing a synced file stores the new bytes, bumps the version and un-syncs it."""
    fid = make_file(alice, "cv.docx", b"version one")
    with app.app_context(), user_scope(alice):
        f = db.session.get(File, fid)
        f.onedrive_sync_status = "synced"
        old_stored = f.stored_path
        db.session.commit()
    r = client.post(
        f"/library/{fid}/replace",
        data={"csrf_token": csrf_token(client), "file": (io.BytesIO(b"version two!"), "cv.docx")},
    )
    assert r.status_code == 303
    [f] = db_rows(app, File, alice)
    assert f.version == 2 and f.size == len(b"version two!")
    assert f.onedrive_sync_status == "not_synced"
    assert f.content_hash == hashlib.sha256(b"version two!").hexdigest()
    assert [p.name for p in stored_files(app)] == [f.stored_path] != [old_stored]


def test_replace_needs_one_file(client, alice, make_file):
    """Replace without a file is a clear 400."""
    fid = make_file(alice)
    r = client.post(f"/library/{fid}/replace", data={"csrf_token": csrf_token(client)})
    assert r.status_code == 400


def test_delete_removes_row_and_bytes(client, app, alice, make_file):
    """Delete removes the row and the stored bytes."""
    fid = make_file(alice)
    r = client.post(f"/library/{fid}/delete", data={"csrf_token": csrf_token(client)})
    assert r.status_code == 303
    assert db_rows(app, File, alice) == [] and stored_files(app) == []


def test_other_users_files_are_404(client, app, make_user, login, make_file):
    """User B gets 404 on every library route that names user A's file, and nothing changes."""
    alice = make_user("a@example.com")
    bob = make_user("b@example.com")
    fid = make_file(alice, "secret.txt", b"alice only")
    before = [(f.id, f.size, f.version, f.stored_path) for f in db_rows(app, File, alice)]
    login(bob)
    token = csrf_token(client)
    assert client.get(f"/library/{fid}/download").status_code == 404
    assert client.post(f"/library/{fid}/delete", data={"csrf_token": token}).status_code == 404
    r = client.post(
        f"/library/{fid}/replace",
        data={"csrf_token": token, "file": (io.BytesIO(b"bob was here"), "x.txt")},
    )
    assert r.status_code == 404
    r = client.post(f"/library/{fid}/rename", data={"csrf_token": token, "name": "bob.txt"})
    assert r.status_code == 404
    assert "secret.txt" not in client.get("/library/").get_data(as_text=True)
    after = [(f.id, f.size, f.version, f.stored_path) for f in db_rows(app, File, alice)]
    assert after == before
    assert len(stored_files(app)) == 1 and incoming_files(app) == []


def test_library_requires_login(client):
    """Anonymous visitors are sent to sign in."""
    r = client.get("/library/")
    assert r.status_code == 303 and "/login" in r.headers["Location"]


def test_security_headers(client):
    """Every page carries CSP without inline script, nosniff, referrer and frame policies."""
    r = client.get("/login")
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"
    assert "<script>" not in r.get_data(as_text=True)


@contextmanager
def heard(signal: Any) -> Iterator[list[dict[str, Any]]]:
    """Collect the keyword arguments of every ``signal`` sent inside the block."""
    got: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        got.append(kwargs)

    with signal.connected_to(receiver):
        yield got


def set_state(app, uid: int, fid: int, **values: Any) -> None:
    """Set columns of a file directly in the database."""
    with app.app_context(), user_scope(uid):
        f = db.session.get(File, fid)
        for key, value in values.items():
            setattr(f, key, value)
        db.session.commit()


def rename(client, fid: int, name: str, next_url: str) -> Any:
    """Post the plain (no JavaScript) rename form."""
    data = {"csrf_token": csrf_token(client), "name": name, "next": next_url}
    return client.post(f"/library/{fid}/rename", data=data)


def test_rename_failed_file_waits_to_sync_again(client, app, alice, make_file):
    """Renaming a file that failed for its name fixes it: new name and MIME type, not_synced."""
    fid = make_file(alice, "scan:2024.jpg")
    set_state(app, alice, fid, onedrive_sync_status="error", onedrive_error="bad name")
    with heard(events.file_renamed) as got:
        r = rename(client, fid, "scan 2024.pdf", "/library/")
    assert r.status_code == 303 and r.headers["Location"] == "/library/"
    [f] = db_rows(app, File, alice)
    assert (f.original_name, f.mime_type) == ("scan 2024.pdf", "application/pdf")
    assert (f.onedrive_sync_status, f.onedrive_error) == ("not_synced", None)
    assert got == [
        {"user_id": alice, "file_id": fid, "old_name": "scan:2024.jpg", "new_name": "scan 2024.pdf"}
    ]
    page = client.get("/library/").get_data(as_text=True)
    assert "Renamed scan:2024.jpg to scan 2024.pdf. It waits for the next Sync All." in page


def test_rename_synced_file_keeps_its_state(client, app, alice, make_file):
    """A synced file renamed stays synced; the message says OneDrive's copy keeps its name."""
    fid = make_file(alice, "a.txt")
    set_state(
        app, alice, fid, onedrive_sync_status="synced", onedrive_id="X", onedrive_name="a.txt"
    )
    r = rename(client, fid, "b.txt", "https://evil.example/")
    assert r.status_code == 303 and r.headers["Location"] == "/library/"
    [f] = db_rows(app, File, alice)
    assert (f.original_name, f.onedrive_sync_status) == ("b.txt", "synced")
    assert "The copy in OneDrive keeps its name a.txt." in client.get("/library/").get_data(
        as_text=True
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "Type a new name"),
        ("   ", "Type a new name"),
        ("a:b.txt", "OneDrive does not allow these characters"),
        ("dir/x.txt", "OneDrive does not allow these characters"),
        ("CON.txt", "reserved name"),
        ("trailing.", "end with a dot"),
        ("tab\there.txt", "control characters"),
        ("x" * 256, "longer than 255"),
    ],
)
def test_rename_refuses_names_onedrive_refuses(app, alice, make_file, name, reason):
    """A typed name OneDrive would refuse is refused with its reason, and nothing changes."""
    fid = make_file(alice, "keep.txt")
    with app.app_context(), user_scope(alice), pytest.raises(ValidationError) as err:
        library.rename_file(alice, fid, name)
    assert reason in err.value.message
    assert db_rows(app, File, alice)[0].original_name == "keep.txt"


def test_rename_is_scoped_to_the_owner(app, make_user, make_file):
    """The service refuses another user's file id as NotFound."""
    owner, other = make_user("o@example.com"), make_user("x@example.com")
    fid = make_file(owner, "mine.txt")
    with app.app_context(), user_scope(other), pytest.raises(NotFound):
        library.rename_file(other, fid, "theirs.txt")
    assert db_rows(app, File, owner)[0].original_name == "mine.txt"


def test_rename_without_javascript_from_settings(client, app, alice, make_file):
    """The plain rename form goes back to the page it came from (next), with the message."""
    fid = make_file(alice, "x.txt")
    r = rename(client, fid, "y.txt", "/settings/onedrive/")
    assert r.status_code == 303 and r.headers["Location"] == "/settings/onedrive/"


@pytest.mark.parametrize(
    ("name", "size", "offered", "not_offered"),
    [
        ("bad:name.txt", 10, "New name for bad:name.txt", ">Retry<"),
        ("huge.bin", MAX_FILE_SIZE + 1, "Replace it with a smaller version", ">Retry<"),
        ("busy.txt", 10, ">Retry<", "New name for"),
    ],
)
def test_failed_file_offers_what_can_fix_it(
    client, app, alice, make_file, name, size, offered, not_offered
):
    """A failed file offers Rename (bad name), Replace (too large) or Retry: never a dead end."""
    fid = make_file(alice, name)
    set_state(app, alice, fid, onedrive_sync_status="error", onedrive_error="Refused.", size=size)
    with app.app_context(), user_scope(alice):
        db.session.add(Integration(user_id=alice, folder_id="F", drive_type="personal"))
        db.session.commit()
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    row = html[html.index(f'id="pending-{fid}"') :]
    row = row[: row.index("</tr>")]
    assert offered in row and not_offered not in row


def test_library_events(client, app, alice, make_file):
    """Upload, download, replace and delete each send their domain event once."""
    signals = {
        "uploaded": events.file_uploaded,
        "downloaded": events.file_downloaded,
        "replaced": events.file_replaced,
        "deleted": events.file_deleted,
    }
    token = csrf_token(client)
    with ExitStack() as stack:
        got = {k: stack.enter_context(heard(sig)) for k, sig in signals.items()}
        client.post("/library/upload", data=upload_payload([("a.txt", b"one")], token))
        [f] = db_rows(app, File, alice)
        client.get(f"/library/{f.id}/download").close()
        client.post(
            f"/library/{f.id}/replace",
            data={"csrf_token": token, "file": (io.BytesIO(b"two!"), "a.txt")},
        )
        client.post(f"/library/{f.id}/delete", data={"csrf_token": token})
    base = {"user_id": alice, "file_id": f.id}
    assert got == {
        "uploaded": [{**base, "size": 3}],
        "downloaded": [base],
        "replaced": [{**base, "size": 4}],
        "deleted": [base],
    }
