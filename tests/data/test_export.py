"""Export: one zip with exactly the user's files byte for byte and a JSON record, flat memory."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from drivesync.extensions import db
from drivesync.models import ExportJob
from drivesync.scope import user_scope
from drivesync.services import export
from drivesync.services.storage import LocalStorage
from tests.conftest import csrf_token, db_rows
from tests.data.conftest import audit_rows


def _export(client) -> zipfile.ZipFile:
    token = csrf_token(client, "/account/export")
    r = client.post("/account/export", data={"csrf_token": token})
    assert r.status_code == 200
    assert r.mimetype == "application/zip"
    assert "attachment" in r.headers["Content-Disposition"]
    return zipfile.ZipFile(io.BytesIO(r.get_data()))


def test_export_holds_exactly_the_users_files_byte_for_byte(app, make_user, make_file, signed_in):
    """Every file of the user, under its name (duplicates numbered), and nothing of another user."""
    a, b = make_user("a@example.com"), make_user("b@example.com")
    files = {
        "report.pdf": os.urandom(5000),
        "scan.png": os.urandom(70_000),
        "notes.txt": b"",
    }
    for name, data in files.items():
        make_file(a, name, data)
    make_file(a, "report.pdf", b"second report")
    make_file(a, "a:b*c?.txt", b"odd name")
    make_file(b, "secret-of-b.txt", b"B's bytes")
    zf = _export(signed_in(a))
    names = sorted(zf.namelist())
    assert names == sorted(
        [
            "drivesync-export.json",
            "files/report.pdf",
            "files/scan.png",
            "files/notes.txt",
            "files/report (2).pdf",
            "files/a_b_c_.txt",
        ]
    )
    for name, data in files.items():
        assert zf.read(f"files/{name}") == data
    assert zf.read("files/report (2).pdf") == b"second report"
    manifest = json.loads(zf.read("drivesync-export.json"))
    assert manifest["account"]["email"] == "a@example.com"
    assert len(manifest["files"]) == 5
    assert {f["path_in_zip"] for f in manifest["files"]} == {
        n for n in names if n.startswith("files/")
    }
    assert [h["kind"] for h in manifest["sync_history"]] == ["uploaded"] * 5  # a's files only
    raw = b"".join(zf.read(n) for n in names)
    assert b"B's bytes" not in raw and b"secret-of-b" not in raw and b"b@example.com" not in raw
    assert "data.exported" in [e["action"] for e in audit_rows(app, a)]
    # The user's own entries; the export itself is recorded after the manifest was made.
    assert [e["action"] for e in manifest["audit"]] == ["account.created", "sign_in.succeeded"]


@pytest.mark.slow
def test_export_memory_stays_flat(app, make_user, make_file):
    """Streaming a 48 MB export allocates a small, size-independent amount of memory."""
    uid = make_user()
    chunk = os.urandom(1024 * 1024)
    for i in range(12):
        make_file(uid, f"part-{i}.bin", chunk * 4)
    with app.test_request_context(), user_scope(uid):
        store = LocalStorage(app.config["STORAGE_DIR"])
        tracemalloc.start()
        total = 0
        for piece in export.stream_export(uid, store):
            total += len(piece)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert total > 48 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"


def test_large_export_runs_in_background_with_a_signed_expiring_link(
    app, make_user, make_file, signed_in
):
    """A large export runs as a job; its link serves that user only, then expires."""
    app.config["EXPORT_INLINE_MB"] = 0  # every export runs in the background (eager in tests)
    uid = make_user()
    make_file(uid, "x.txt", b"xyz")
    client = signed_in(uid)
    token = csrf_token(client, "/account/export")
    r = client.post("/account/export", data={"csrf_token": token})
    assert r.status_code == 303
    (job,) = db_rows(app, ExportJob, uid)
    assert job.status == "done" and job.files_total == 1 and job.expires_at is not None
    page = client.get("/account/export").get_data(as_text=True)
    assert "Your export is ready" in page
    status = client.get(f"/account/export/{job.id}/status").get_data(as_text=True)
    link = status.split('href="', 1)[1].split('"', 1)[0]
    with client.get(link) as r:
        assert r.status_code == 200
        zf = zipfile.ZipFile(io.BytesIO(r.get_data()))
    assert zf.read("files/x.txt") == b"xyz"
    assert (
        client.get(link.rsplit("/", 1)[0] + "/tampered" + link.rsplit("/", 1)[1]).status_code == 404
    )
    zip_path = Path(app.config["STORAGE_DIR"]) / job.stored_path
    assert zip_path.exists()
    with app.app_context(), user_scope(uid):
        row = db.session.get(ExportJob, job.id)
        row.expires_at = row.created_at
        db.session.commit()
    assert client.get(link).status_code == 404
    client.get("/account/export")  # visiting the page purges expired zips
    assert not zip_path.exists()
    assert db_rows(app, ExportJob, uid) == []
