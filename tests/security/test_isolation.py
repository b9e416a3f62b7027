"""The isolation matrix: user B calls every route with user A's ids and gets 404; A is untouched."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from drivesync.extensions import db
from drivesync.models import File, Integration, OAuthToken, SyncRun
from drivesync.scope import user_scope
from tests.conftest import db_rows, sign_in_as
from tests.integration.conftest import ALEX, MEGAN, consent, csrf_from

pytestmark = pytest.mark.emulator


@pytest.fixture
def app_overrides(emulator_config: dict[str, Any]) -> dict[str, Any]:
    """Both users talk to the emulator."""
    return emulator_config


def _connect(client, email: str) -> None:
    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    r = client.post("/settings/onedrive/connect", data={"csrf_token": token})
    back = consent(r.headers["Location"], email)
    path = back.split("localhost", 1)[1]
    assert client.get(path).status_code == 303


def snapshot(app: Flask, user_id: int) -> list[Any]:
    """Return everything stored for ``user_id``, comparable before and after."""
    rows: list[Any] = []
    for model in (File, Integration, OAuthToken, SyncRun):
        for row in db_rows(app, model, user_id):
            with app.app_context(), user_scope(user_id):
                row = db.session.merge(row, load=False)
                rows.append(
                    (
                        model.__name__,
                        sorted(
                            (c.key, str(getattr(row, c.key)))
                            for c in model.__table__.columns
                            if c.key not in ("access_token_encrypted", "refresh_token_encrypted")
                        ),
                    )
                )
    return rows


@pytest.fixture
def two_users(app, make_user, emu):
    """User A (connected, files in every state, a run) and user B (connected), B signed in."""
    a, b = make_user("a@example.com"), make_user("b@example.com")
    client_a, client_b = app.test_client(), app.test_client()
    for client, uid in ((client_a, a), (client_b, b)):
        sign_in_as(client, uid)
    _connect(client_a, ALEX)
    _connect(client_b, MEGAN)
    ids = {}
    for status in ("not_synced", "error", "conflict", "synced"):
        token = csrf_from(client_a.get("/library/").get_data(as_text=True))
        client_a.post(
            "/library/upload",
            data={"csrf_token": token, "files": [(io.BytesIO(status.encode()), f"{status}.txt")]},
        )
    with app.app_context(), user_scope(a):
        for f in db.session.execute(db.select(File)).scalars():
            status = f.original_name.removesuffix(".txt")
            f.onedrive_sync_status = status
            if status == "synced":
                f.onedrive_id = "A-ITEM"
            ids[status] = f.id
        db.session.add(SyncRun(user_id=a, status="done", total=1, succeeded=1))
        db.session.commit()
    return a, b, client_b, ids


def test_isolation_matrix(app, two_users, emu):
    """Every route that names A's file, item or page answers B with 404 and changes nothing."""
    a, b, client_b, ids = two_users
    before = snapshot(app, a)
    files_before = stored(app)
    token = csrf_from(client_b.get("/library/").get_data(as_text=True))
    alex_items = {i["path"]: i for i in emu.list_items(ALEX)}
    folder = next(i for p, i in alex_items.items() if p.endswith("/drivesync"))
    calls = []
    for fid in ids.values():
        calls += [
            ("GET", f"/library/{fid}/download", None),
            ("POST", f"/library/{fid}/delete", {"csrf_token": token}),
            (
                "POST",
                f"/library/{fid}/replace",
                {"csrf_token": token, "file": (io.BytesIO(b"evil"), "x.txt")},
            ),
            ("POST", f"/library/{fid}/rename", {"csrf_token": token, "name": "mallory.txt"}),
            ("POST", f"/settings/onedrive/files/{fid}/retry", {"csrf_token": token}),
            *[
                (
                    "POST",
                    f"/settings/onedrive/files/{fid}/resolve",
                    {"csrf_token": token, "action": action},
                )
                for action in ("keep_both", "replace", "skip")
            ],
        ]
    calls += [
        ("POST", "/settings/onedrive/import", {"csrf_token": token, "item_id": folder["id"]}),
        ("GET", "/settings/onedrive/browse?next=" + emu_link(app, folder["id"]), None),
    ]
    for method, path, data in calls:
        r = client_b.open(path, method=method, data=data)
        r.close()
        assert r.status_code == 404, (method, path, r.status_code)
    # Pages and partials B may open show nothing of A's.
    for path in ("/library/", "/settings/onedrive/", "/settings/onedrive/progress"):
        html = client_b.get(path).get_data(as_text=True)
        assert "not_synced.txt" not in html and ALEX not in html
    assert snapshot(app, a) == before
    assert stored(app) == files_before


def stored(app: Flask) -> list[str]:
    """Return the names in the storage folder (bytes and leftovers alike)."""
    return sorted(str(p) for p in Path(app.config["STORAGE_DIR"]).rglob("*"))


def emu_link(app: Flask, folder_id: str) -> str:
    """Return a next-page link for A's folder, as Graph would have given it to A."""
    return f"{app.config['GRAPH_URL']}/me/drive/items/{folder_id}/children?$skiptoken=2"
