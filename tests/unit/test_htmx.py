"""The htmx convention: every failing htmx action answers 2xx with its message in #flashes.

htmx 2 does not swap 4xx/5xx answers, so a failure sent with its HTTP status would show nothing.
Normal (non-htmx) requests keep their status codes and full pages; those are checked too.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, g
from flask.testing import FlaskClient

from drivesync import create_app
from drivesync.extensions import db
from drivesync.models import File
from drivesync.scope import user_scope
from tests.conftest import PG_OWNER_URL, app_config, csrf_token, db_rows
from tests.fixtures_emulator import ALEX

HX = {"HX-Request": "true"}


@pytest.fixture
def alice(make_user, login):
    """A signed-in user."""
    uid = make_user("alice@example.com")
    login(uid)
    return uid


def set_status(app: Flask, uid: int, file_id: int, status: str, **values: Any) -> None:
    """Put one of ``uid``'s files into ``status`` directly in the database."""
    with app.app_context(), user_scope(uid):
        f = db.session.get(File, file_id)
        assert f is not None
        f.onedrive_sync_status = status
        for key, value in values.items():
            setattr(f, key, value)
        db.session.commit()


def post_hx(client: FlaskClient, path: str, data: dict[str, Any] | None = None, **kw: Any) -> Any:
    """POST as htmx does: the CSRF token in X-CSRFToken, HX-Request set."""
    token = csrf_token(client)
    return client.post(path, data=data or {}, headers={**HX, "X-CSRFToken": token}, **kw)


def assert_flash(r: Any, text: str) -> str:
    """Assert an htmx answer is 200, retargeted to #flashes, and carries ``text``."""
    html = r.get_data(as_text=True)
    assert r.status_code == 200, (r.status_code, html[:300])
    assert r.headers["HX-Retarget"] == "#flashes"
    assert r.headers["HX-Reswap"] == "innerHTML"
    assert text in html.replace("&#39;", "'"), html[:500]
    assert "<html" not in html
    return html


def test_message_response_renders_flash_markup(client, alice):
    """The htmx error answer holds a .flash-error paragraph, the same markup as a flashed one."""
    r = post_hx(client, "/library/upload")
    html = assert_flash(r, "Choose at least one file to upload.")
    assert 'class="flash flash-error"' in html


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        ("/library/upload", {}, "Choose at least one file to upload."),
        ("/library/{fid}/replace", {}, "Choose exactly one file as the new version."),
        ("/library/{fid}/rename", {"name": "bad:name.txt"}, "OneDrive does not allow"),
        ("/library/{fid}/rename", {"name": "   "}, "Type a new name for the file."),
        ("/settings/onedrive/files/{fid}/retry", {}, "Only a file that failed to sync"),
        ("/settings/onedrive/files/{fid}/resolve", {"action": "keep_both"}, "not in conflict"),
        ("/settings/onedrive/files/{fid}/resolve", {"action": "replace"}, "not in conflict"),
        ("/settings/onedrive/files/{fid}/resolve", {"action": "skip"}, "not in conflict"),
        ("/settings/onedrive/files/{fid}/resolve", {"action": "nuke"}, "Choose Keep both"),
        ("/settings/onedrive/sync", {}, "Connect your OneDrive first."),
    ],
)
def test_refused_htmx_action_shows_message(client, app, alice, make_file, path, data, message):
    """A refused htmx action answers 200 with its message retargeted to the flash area."""
    fid = make_file(alice)
    before = db_rows(app, File, alice)[0].original_name
    assert_flash(post_hx(client, path.format(fid=fid), data), message)
    assert db_rows(app, File, alice)[0].original_name == before


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/library/upload", {}, 400),
        ("/library/{fid}/rename", {"name": "bad:name.txt"}, 400),
        ("/settings/onedrive/files/{fid}/retry", {}, 409),
        ("/settings/onedrive/files/{fid}/resolve", {"action": "skip"}, 409),
    ],
)
def test_refused_plain_form_keeps_status_and_page(client, alice, make_file, path, data, status):
    """Without htmx the same refusal is a full error page with its HTTP status."""
    fid = make_file(alice)
    r = client.post(path.format(fid=fid), data={"csrf_token": csrf_token(client), **data})
    assert r.status_code == status
    assert "<html" in r.get_data(as_text=True) and "HX-Retarget" not in r.headers


def test_upload_too_large_htmx(client, app, alice):
    """An upload over the limit (413) shows 'File too large' in the flash area."""
    app.config["MAX_CONTENT_LENGTH"] = 1024
    big = {"files": [(io.BytesIO(b"x" * 4096), "big.bin")]}
    assert_flash(post_hx(client, "/library/upload", big), "File too large")
    assert db_rows(app, File, alice) == []


def test_csrf_failure_htmx(client, alice, make_file):
    """A forged CSRF token on an htmx action says the form expired, in the flash area."""
    fid = make_file(alice)
    r = client.post(f"/library/{fid}/delete", headers={**HX, "X-CSRFToken": "forged"})
    assert_flash(r, "Your form expired")


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/library/{fid}/delete", {}),
        ("/library/{fid}/rename", {"name": "mine.txt"}),
        ("/library/{fid}/replace", {"file": (io.BytesIO(b"evil"), "x.txt")}),
        ("/settings/onedrive/files/{fid}/retry", {}),
        ("/settings/onedrive/files/{fid}/resolve", {"action": "skip"}),
    ],
)
def test_other_users_id_htmx(client, app, make_user, login, make_file, path, data):
    """Another user's file id answers htmx with 'does not exist' and changes nothing."""
    owner = make_user("owner@example.com")
    fid = make_file(owner, "private.txt")
    login(make_user("mallory@example.com"))
    assert_flash(post_hx(client, path.format(fid=fid), data), "That file does not exist.")
    [f] = db_rows(app, File, owner)
    assert f.original_name == "private.txt" and f.onedrive_sync_status == "not_synced"


def test_unauthenticated_htmx_action_redirects_to_sign_in(client):
    """An htmx action without a session gets 401 with HX-Redirect to sign-in (kept as it was)."""
    token = csrf_token(client, "/login")
    r = client.post("/settings/onedrive/files/1/retry", headers={**HX, "X-CSRFToken": token})
    assert r.status_code == 401 and r.headers["HX-Redirect"].startswith("/login")


@pytest.fixture
def make_app(tmp_path, database_url) -> Iterator[Callable[..., Flask]]:
    """Build apps with extra config on the test database; dispose their engines afterwards."""
    apps: list[Flask] = []

    def _make(**overrides: Any) -> Flask:
        app = create_app(app_config(tmp_path, database_url, **overrides))
        if not PG_OWNER_URL:
            with app.app_context():
                db.create_all()
        apps.append(app)
        return app

    yield _make
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_rate_limit_htmx(make_app):
    """A rate-limited htmx request (429) shows its message in the flash area."""
    client = make_app(RATELIMIT_ENABLED=True, LOGIN_RATE_LIMIT="1/minute").test_client()
    token = csrf_token(client, "/login")
    form = {"email": "nobody@example.com", "password": "wrong"}
    headers = {**HX, "X-CSRFToken": token}
    client.post("/login", data=form, headers=headers)
    assert_flash(client.post("/login", data=form, headers=headers), "Too many sign-in attempts")


@pytest.fixture
def failing_app(make_app) -> Flask:
    """An app with a route that crashes, answered by the error handler (not propagated)."""
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    def boom() -> str:
        raise RuntimeError("secret detail of the crash")

    app.add_url_rule("/boom", view_func=boom)
    app.before_request(lambda: setattr(g, "request_id", "req-42"))
    return app


def test_server_error_htmx_is_generic_with_request_id(failing_app):
    """A 500 on htmx shows a generic message with the request id, never the exception."""
    r = failing_app.test_client().get("/boom", headers=HX)
    html = assert_flash(r, "Something went wrong")
    assert "Reference: req-42." in html and "secret detail" not in html


def test_server_error_page_keeps_500(failing_app):
    """A 500 on a normal request is the full error page with status 500."""
    r = failing_app.test_client().get("/boom")
    html = r.get_data(as_text=True)
    assert r.status_code == 500 and "Something went wrong" in html
    assert "secret detail" not in html


def test_successful_htmx_actions_redirect_with_flash(client, alice, make_file):
    """Upload, rename and delete succeed over htmx with HX-Redirect; the next page shows why."""
    fid = make_file(alice, "first.txt")
    upload = {"files": [(io.BytesIO(b"hello"), "second.txt")]}
    for path, data, shown in (
        ("/library/upload", upload, "Uploaded 1 file."),
        (
            f"/library/{fid}/rename",
            {"name": "renamed.txt", "next": "/library/?sort=name"},
            "Renamed first.txt to renamed.txt.",
        ),
        (f"/library/{fid}/delete", {}, "File deleted."),
    ):
        r = post_hx(client, path, data)
        assert r.status_code == 204 and "HX-Redirect" in r.headers, path
        page = client.get(r.headers["HX-Redirect"]).get_data(as_text=True)
        assert shown in page
    assert r.headers["HX-Redirect"] == "/library/"


# -- actions on a connected account (the emulator) -------------------------------------------------


@pytest.fixture
def connected(app, alice, connect, emulator_config, emu):
    """Alice, connected to Alex's OneDrive through the emulator."""
    app.config.update(emulator_config)
    assert connect(ALEX).status_code == 303
    return alice


@pytest.mark.emulator
def test_refused_retry_refreshes_the_list_out_of_band(client, app, connected, make_file):
    """A Retry refused with 409 shows its message and the fresh files list (out of band)."""
    fid = make_file(connected, "report.pdf")
    html = assert_flash(
        post_hx(client, f"/settings/onedrive/files/{fid}/retry"),
        "Only a file that failed to sync can be retried.",
    )
    assert 'id="pending"' in html and 'hx-swap-oob="true"' in html
    assert 'id="dashboard"' in html and "report.pdf" in html


@pytest.mark.emulator
def test_sync_all_with_nothing_to_sync(client, connected):
    """Sync All with nothing pending says so in the flash area."""
    assert_flash(post_hx(client, "/settings/onedrive/sync"), "Nothing to sync")


@pytest.mark.emulator
def test_import_refused_htmx(client, app, connected, make_file, emu):
    """Imports of a missing item and of an item the library tracks say why, in the flash area."""
    path = "/settings/onedrive/import"
    assert_flash(
        post_hx(client, path, {"item_id": "missing"}), "That OneDrive file does not exist."
    )
    item = emu.modify_item(ALEX, "/drivesync/tracked.txt", b"tracked")
    fid = make_file(connected, "tracked.txt", b"tracked")
    set_status(app, connected, fid, "synced", onedrive_id=item["id"])
    r = post_hx(client, path, {"item_id": item["id"]})
    assert_flash(r, "already in your library as tracked.txt")
    assert len(db_rows(app, File, connected)) == 1


@pytest.mark.emulator
def test_retry_of_failed_file_swaps_the_list(client, app, connected, make_file):
    """A Retry that is accepted answers the files list for #pending (no retarget)."""
    fid = make_file(connected, "report.pdf")
    set_status(app, connected, fid, "error", onedrive_error="OneDrive was busy.")
    r = post_hx(client, f"/settings/onedrive/files/{fid}/retry")
    assert r.status_code == 200 and "HX-Retarget" not in r.headers
    assert 'id="pending"' in r.get_data(as_text=True)
