"""Export: one zip with exactly the user's files byte for byte and a JSON record, flat memory."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest

from drivesync.extensions import db
from drivesync.models import ExportJob, utcnow
from drivesync.scope import user_scope
from drivesync.services import export, scheduler
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


def _job(app, uid, **values) -> int:
    with app.app_context(), user_scope(uid):
        job = ExportJob(user_id=uid, files_total=1, bytes_total=3, **values)
        db.session.add(job)
        db.session.commit()
        return job.id


def _row(app, uid, job_id) -> ExportJob:
    with app.app_context(), user_scope(uid):
        job = db.session.get(ExportJob, job_id)
        db.session.expunge(job)
        return job


def test_an_export_whose_worker_died_is_built_again_and_its_part_removed(app, make_user, make_file):
    """Running with a stale heartbeat (the worker was killed): the scheduler queues it again,
    the new build removes the dead worker's partial zip, and the export ends downloadable."""
    uid = make_user()
    make_file(uid, "a.txt", b"abc")
    storage = LocalStorage(app.config["STORAGE_DIR"])
    part = "d" * 32  # a stored name, as build_export records before writing
    storage.path(part).parent.mkdir(parents=True, exist_ok=True)
    storage.path(part).write_bytes(b"half a zip")
    old = utcnow() - timedelta(hours=1)
    job_id = _job(app, uid, status="running", created_at=old, started_at=old, heartbeat_at=old,
                  stored_path=part)  # fmt: skip
    with app.app_context():
        assert uid in scheduler.tick()
    job = _row(app, uid, job_id)
    assert (job.status, job.requeues) == ("done", 1)
    assert job.stored_path != part and storage.path(job.stored_path).exists()
    assert not storage.path(part).exists()
    with zipfile.ZipFile(storage.path(job.stored_path)) as zf:
        assert zf.read("files/a.txt") == b"abc"


def test_a_lost_export_message_is_sent_again_and_a_hopeless_one_is_closed(app, make_user):
    """Queued and never picked up: queued again; after three requeues it fails, plainly."""
    uid = make_user()
    old = utcnow() - timedelta(hours=1)
    lost = _job(app, uid, status="queued", created_at=old)
    hopeless = _job(app, uid, status="running", created_at=old, heartbeat_at=old, requeues=3)
    with app.app_context():
        scheduler.tick()
    assert _row(app, uid, lost).status == "done"
    gave_up = _row(app, uid, hopeless)
    assert (gave_up.status, gave_up.error) == ("failed", export.INTERRUPTED)
