"""Hostile input: each gets a clear 4xx or a per-file reason, and nothing else moves."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from drivesync.models import File, Integration, OAuthToken, User
from tests.conftest import (
    PASSWORD,
    csrf_token,
    db_rows,
    mailed_link,
    outbox_messages,
    sign_in_as,
)
from tests.fixtures_emulator import ALEX, consent, csrf_from, query


def state_of(app: Flask, uid: int) -> tuple[Any, ...]:
    """Return the user's rows and the storage folder's contents, for before/after checks."""
    files = sorted(
        (f.id, f.original_name, f.size, f.version, f.stored_path, f.onedrive_sync_status)
        for f in db_rows(app, File, uid)
    )
    integ = sorted((i.id, i.status, i.account_email) for i in db_rows(app, Integration, uid))
    root = Path(app.config["STORAGE_DIR"])
    stored = sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    return files, integ, stored


@pytest.fixture
def alice(make_user, login):
    """A signed-in user."""
    uid = make_user("alice@example.com")
    login(uid)
    return uid


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("../../../../etc/passwd", "passwd"),
        ("/absolute/path/x.txt", "x.txt"),
        ("nul\x00byte.txt", "nulbyte.txt"),
        ("\u202eexe.txt", "exe.txt"),
        ("🙂" * 300, "🙂" * 255),
        ("CON", "CON"),
        ("a:b?c*.txt", "a:b?c*.txt"),
    ],
)
def test_hostile_names_are_display_only(client, app, alice, raw, shown):
    """A hostile name is cleaned for display; the bytes go under a generated name."""
    r = client.post(
        "/library/upload",
        data={"csrf_token": csrf_token(client), "files": [(io.BytesIO(b"x"), raw)]},
    )
    assert r.status_code == 303
    [f] = db_rows(app, File, alice)
    assert f.original_name == shown
    [stored] = [p for p in Path(app.config["STORAGE_DIR"]).iterdir() if p.is_file()]
    assert stored.name == f.stored_path and len(stored.name) == 32


def test_invalid_utf8_name_is_refused_cleanly(client, app, alice):
    """A multipart body whose headers are not UTF-8 is refused with 400 and stores nothing.

    werkzeug cannot decode such a part and drops the whole form, CSRF token included.
    """
    token = csrf_token(client)
    before = state_of(app, alice)
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="'
        ).encode()
        + b"bad\xff\xfename.txt"
        + (f'"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n').encode()
    )
    r = client.post(
        "/library/upload", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert r.status_code == 400
    assert state_of(app, alice) == before


@pytest.mark.parametrize("declared", ["10", "999999"])
def test_lying_content_length(client, app, alice, declared):
    """A body whose Content-Length lies is refused with a 4xx and leaves nothing behind."""
    token = csrf_token(client)
    before = state_of(app, alice)
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n" + "y" * 5000 + f"\r\n--{boundary}--\r\n"
    ).encode()
    r = client.post(
        "/library/upload",
        input_stream=io.BytesIO(body),
        content_type=f"multipart/form-data; boundary={boundary}",
        environ_overrides={"CONTENT_LENGTH": declared},
    )
    assert 400 <= r.status_code < 500
    assert state_of(app, alice) == before


def test_oversized_body_413(client, app, alice):
    """A body over the limit gets the 413 page and stores nothing."""
    app.config["MAX_CONTENT_LENGTH"] = 50_000
    before = state_of(app, alice)
    r = client.post(
        "/library/upload",
        data={"csrf_token": csrf_token(client), "files": [(io.BytesIO(b"z" * 100_000), "big.bin")]},
    )
    assert r.status_code == 413 and "File too large" in r.get_data(as_text=True)
    assert state_of(app, alice) == before


@pytest.mark.parametrize(
    "path",
    [
        "/library/upload",
        "/logout",
        "/settings/onedrive/connect",
        "/settings/onedrive/disconnect",
        "/settings/onedrive/sync",
        "/settings/onedrive/import",
        "/library/1/delete",
        "/library/1/rename",
        "/settings/onedrive/files/1/retry",
        "/settings/onedrive/files/1/resolve",
    ],
)
def test_missing_or_wrong_csrf_token(client, app, alice, make_file, path):
    """Every state-changing route refuses a POST without a valid CSRF token."""
    make_file(alice)
    before = state_of(app, alice)
    for data, headers in (
        ({}, {}),
        ({"csrf_token": "forged"}, {}),
        ({}, {"HX-Request": "true", "X-CSRFToken": "forged"}),
    ):
        r = client.post(path, data=data, headers=headers)
        if headers:  # htmx: refused with the message in the flash area (views/htmx.py)
            assert r.status_code == 200, (path, data, headers)
            assert r.headers["HX-Retarget"] == "#flashes", (path, r.headers)
            assert "Your form expired" in r.get_data(as_text=True), path
        else:
            assert r.status_code == 400, (path, data, headers)
    assert state_of(app, alice) == before
    assert client.get("/library/").status_code == 200  # still signed in


def test_tampered_session_cookie_is_anonymous(client, app, make_user):
    """A session cookie whose signature does not match signs nobody in."""
    uid = make_user("mallory-target@example.com")
    sign_in_as(client, uid)
    cookie = client.get_cookie("session")
    assert cookie is not None
    payload, _, sig = cookie.value.rpartition(".")
    client.set_cookie("session", payload + "." + ("A" if sig[0] != "A" else "B") + sig[1:])
    r = client.get("/library/")
    assert r.status_code == 303 and "/login" in r.headers["Location"]


def test_nul_and_overlong_form_fields(client, app):
    """NUL bytes and huge values in sign-up fields get field errors, not a crash.

    The address is checked on the sign-up form, the password on the page its mailed link opens.
    """
    token = csrf_token(client, "/signup")
    for email in ("a\x00@example.com", "x" * 10_000):
        r = client.post(
            "/signup",
            data={"csrf_token": token, "email": email, "password": PASSWORD, "confirm": PASSWORD},
        )
        assert r.status_code == 400
    client.post("/signup", data={"csrf_token": token, "email": "ok@example.com"})
    client.get(mailed_link(outbox_messages(app)[0], "/signup/"))
    password = "p\x00" * 10
    r = client.post(
        "/signup/complete",
        data={"csrf_token": token, "password": password, "confirm": password},
    )
    assert r.status_code == 400
    assert db_rows(app, User) == []


@pytest.mark.parametrize("page", ["0", "-5", "abc", "9" * 40])
def test_bad_page_numbers(client, alice, page):
    """Nonsense page numbers fall back to a valid page."""
    assert client.get(f"/library/?page={page}&sort=<script>").status_code == 200


@pytest.mark.emulator
def test_replayed_authorization_code(client, app, alice, emulator_config, emu):
    """An authorization code used once cannot connect again, even with a fresh state."""
    app.config.update(emulator_config)
    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    r = client.post("/settings/onedrive/connect", data={"csrf_token": token})
    q = query(consent(r.headers["Location"], ALEX))
    assert (
        client.get(f"/settings/onedrive/callback?code={q['code']}&state={q['state']}").status_code
        == 303
    )
    before = state_of(app, alice)
    tokens_before = [(t.id, t.expires_at) for t in db_rows(app, OAuthToken, alice)]
    r = client.post("/settings/onedrive/connect", data={"csrf_token": token})
    fresh_state = query(r.headers["Location"])["state"]
    r = client.get(f"/settings/onedrive/callback?code={q['code']}&state={fresh_state}")
    assert r.status_code == 303
    assert "could not be connected" in client.get("/settings/onedrive/").get_data(as_text=True)
    assert state_of(app, alice) == before
    assert [(t.id, t.expires_at) for t in db_rows(app, OAuthToken, alice)] == tokens_before


@pytest.mark.emulator
def test_onedrive_invalid_name_gets_a_reason(client, app, alice, emulator_config, emu, connect):
    """A file OneDrive cannot take gets a per-file reason; other files still sync."""
    app.config.update(emulator_config)
    assert connect(ALEX).status_code == 303
    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    client.post(
        "/library/upload",
        data={
            "csrf_token": token,
            "files": [
                (io.BytesIO(b"ok"), "fine.txt"),
                (io.BytesIO(b"no"), "bad:name?.txt"),
                (io.BytesIO(b"no"), "desktop.ini"),
            ],
        },
    )
    r = client.post("/settings/onedrive/sync", data={"csrf_token": token})
    assert r.status_code == 303
    files = {f.original_name: f for f in db_rows(app, File, alice)}
    assert files["fine.txt"].onedrive_sync_status == "synced"
    for name in ("bad:name?.txt", "desktop.ini"):
        assert files[name].onedrive_sync_status == "error"
        assert files[name].onedrive_error
    page = client.get("/settings/onedrive/").get_data(as_text=True)
    assert files["desktop.ini"].onedrive_error in page.replace("&#39;", "'").replace("&#34;", '"')
    uploaded = {i["path"].rsplit("/", 1)[-1] for i in emu.list_items(ALEX)}
    assert "fine.txt" in uploaded and "desktop.ini" not in uploaded
