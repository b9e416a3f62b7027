"""The import views: Browse's Import starts a job and polls it; htmx failures; others' jobs."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from drivesync import tasks
from drivesync.extensions import db
from drivesync.models import File, ImportJob
from drivesync.scope import user_scope
from drivesync.services import changes
from tests.conftest import csrf_token, db_rows
from tests.fixtures_emulator import ALEX

pytestmark = pytest.mark.emulator
HX = {"HX-Request": "true"}


def test_htmx_import_answers_a_polling_partial_until_done(client, app, alice, emu, monkeypatch):
    """The Import button swaps in a progress partial that polls; once done it links the file."""
    held: list[int] = []
    monkeypatch.setattr(tasks, "enqueue_import", lambda job_id, uid: held.append(job_id))
    item = emu.modify_item(ALEX, "/drivesync/scan.pdf", b"scan")
    r = client.post(
        "/settings/onedrive/import",
        data={"csrf_token": csrf_token(client), "item_id": item["id"]},
        headers=HX,
    )
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    [job_id] = held
    assert f'hx-get="/settings/onedrive/imports/{job_id}"' in body and "Waiting to import" in body
    monkeypatch.undo()
    with app.app_context():
        tasks.import_job(job_id, alice)
    r = client.get(f"/settings/onedrive/imports/{job_id}", headers=HX)
    body = r.get_data(as_text=True)
    [f] = db_rows(app, File, alice)
    assert "hx-get" not in body  # finished: no more polling
    assert f'href="/library/{f.id}/download"' in body and "Imported" in body


def test_plain_form_import_redirects_to_the_job_page(client, app, alice, emu):
    """Without htmx the form redirects to a page showing the job."""
    item = emu.modify_item(ALEX, "/drivesync/scan.pdf", b"scan")
    r = client.post(
        "/settings/onedrive/import", data={"csrf_token": csrf_token(client), "item_id": item["id"]}
    )
    assert r.status_code == 303
    [job] = db_rows(app, ImportJob, alice)
    assert r.headers["Location"].endswith(f"/settings/onedrive/imports/{job.id}")
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Import from OneDrive" in page and "scan.pdf" in page


def test_htmx_refusal_goes_to_the_flash_area(client, app, alice, emu):
    """A refused import answers 200 retargeted to #flashes, never a 4xx."""
    item = emu.modify_item(ALEX, "/drivesync/big.bin", b"x" * (2 * 1024 * 1024))
    app.config["MAX_UPLOAD_MB"] = 1
    r = client.post(
        "/settings/onedrive/import",
        data={"csrf_token": csrf_token(client), "item_id": item["id"]},
        headers=HX,
    )
    assert r.status_code == 200 and r.headers["HX-Retarget"] == "#flashes"
    assert "upload limit" in r.get_data(as_text=True)
    assert db_rows(app, ImportJob, alice) == []


def test_import_without_csrf_is_refused(client, app, alice, emu):
    """CSRF on the import and the version import."""
    item = emu.modify_item(ALEX, "/drivesync/scan.pdf", b"scan")
    r = client.post("/settings/onedrive/import", data={"item_id": item["id"]})
    assert r.status_code == 400
    r = client.post("/settings/onedrive/files/1/import-version", data={}, headers=HX)
    assert r.headers.get("HX-Retarget") == "#flashes"
    assert db_rows(app, ImportJob, alice) == []


def test_others_jobs_and_files_are_not_found(client, app, alice, make_user, make_file, login):
    """Another user's import job and file do not exist for this user."""
    bob = make_user("bob@example.com")
    fid = make_file(bob, "b.txt", b"b")
    with app.app_context(), user_scope(bob):
        job = ImportJob(user_id=bob, item_id="x", name="b.txt")
        db.session.add(job)
        db.session.commit()
        job_id = job.id
    assert client.get(f"/settings/onedrive/imports/{job_id}").status_code == 404
    r = client.post(
        f"/settings/onedrive/files/{fid}/import-version", data={"csrf_token": csrf_token(client)}
    )
    assert r.status_code == 404


def test_browse_marks_new_items_and_shows_imports_under_way(client, app, alice, emu, monkeypatch):
    """Items the delta check found and no library file tracks are "New in OneDrive"; an item
    being imported shows its progress instead of the Import button."""
    emu.modify_item(ALEX, "/drivesync/new.pdf", b"n")
    second = emu.modify_item(ALEX, "/drivesync/coming.pdf", b"c")
    tracked = emu.modify_item(ALEX, "/drivesync/tracked.pdf", b"t")
    with app.app_context(), user_scope(alice):
        changes.request_check(alice, min_gap=timedelta(0))
        assert changes.check(alice) is not None
    monkeypatch.setattr(tasks, "enqueue_import", lambda *a: None)
    for item in (tracked, second):
        client.post(
            "/settings/onedrive/import",
            data={"csrf_token": csrf_token(client), "item_id": item["id"]},
            headers=HX,
        )
    with app.app_context():
        tasks.import_job(1, alice)  # tracked.pdf is imported; coming.pdf stays queued
    html = client.get("/settings/onedrive/browse").get_data(as_text=True)

    def row(name: str) -> str:
        m = re.search(rf'<tr data-name="{re.escape(name)}">(.*?)</tr>', html, re.S)
        assert m, name
        return m.group(1)

    assert "New in OneDrive" in row("new.pdf") and "Import to library" in row("new.pdf")
    assert "New in OneDrive" not in row("tracked.pdf") and "In your library" in row("tracked.pdf")
    assert "Waiting to import coming.pdf" in row("coming.pdf")
    assert "Import to library" not in row("coming.pdf")
