"""The isolation matrix for the data routes: B gets 404 for A's history, export and activity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask

from drivesync import events
from drivesync.extensions import db
from drivesync.models import AuditEvent, ExportJob, File, FileEvent
from drivesync.scope import user_scope
from drivesync.services import export
from tests.conftest import PASSWORD, csrf_token, db_rows


def snapshot(app: Flask, user_id: int) -> list[Any]:
    """Return everything stored for ``user_id`` in the data tables, comparable before and after."""
    rows: list[Any] = []
    with app.app_context(), user_scope(user_id):
        for model in (File, FileEvent, ExportJob, AuditEvent):
            table = model.__table__
            owner = table.c.owner_id if "owner_id" in table.c else table.c.user_id
            for row in db.session.execute(db.select(table).where(owner == user_id)).mappings():
                rows.append((model.__name__, sorted((k, str(v)) for k, v in row.items())))
    return rows


def stored(app: Flask) -> list[str]:
    """Return the names in the storage folder."""
    return sorted(str(p) for p in Path(app.config["STORAGE_DIR"]).rglob("*"))


def test_data_routes_isolation_matrix(app, make_user, make_file, signed_in):
    """Every data route naming A's file or export answers B with 404 and changes nothing of A's."""
    app.config["EXPORT_INLINE_MB"] = 0  # A's export is a background job with a link
    a, b = make_user("a@example.com"), make_user("b@example.com")
    fid = make_file(a, "a-private.pdf", b"A's bytes")
    deleted = make_file(a, "a-deleted.pdf", b"gone")
    with app.test_request_context("/"), user_scope(a):
        events.file_uploaded.send(None, user_id=a, file_id=fid, size=9)
        events.file_deleted.send(None, user_id=a, file_id=deleted)
        events.password_changed.send(None, user_id=a)  # an entry only A has
        db.session.commit()
    client_a = signed_in(a)
    client_a.post("/account/export", data={"csrf_token": csrf_token(client_a, "/account/export")})
    (job,) = db_rows(app, ExportJob, a)
    with app.test_request_context():
        link = f"/account/export/download/{export.download_token(job)}"
    with client_a.get(link) as r:
        assert r.status_code == 200
    before, files_before = snapshot(app, a), stored(app)

    client_b = signed_in(b)
    for path in (
        f"/files/{fid}/history",
        f"/files/{deleted}/history",
        f"/account/export/{job.id}/status",
        link,
    ):
        r = client_b.get(path)
        r.close()
        assert r.status_code == 404, (path, r.status_code)
    for path in ("/account/activity", "/account/", "/account/export", "/account/delete"):
        html = client_b.get(path).get_data(as_text=True)
        assert "a-private.pdf" not in html and "a-deleted.pdf" not in html, path
        assert "You changed your password." not in html, path
    token = csrf_token(client_b, "/account/delete")
    r = client_b.post("/account/delete", data={"csrf_token": token, "password": "wrong"})
    assert r.status_code == 400
    assert snapshot(app, a) == before
    assert stored(app) == files_before
    # And B deleting B's own account leaves A whole.
    client_b.post("/account/delete", data={"csrf_token": token, "password": PASSWORD})
    assert snapshot(app, a) == before
    assert stored(app) == files_before
