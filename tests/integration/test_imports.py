"""Imports from OneDrive as background jobs, against the emulator (eager task backend)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from drivesync import tasks
from drivesync.extensions import db
from drivesync.models import File, ImportJob, utcnow
from drivesync.scope import user_scope
from drivesync.services import imports, scheduler
from drivesync.services.errors import Conflict, NotFound, ServiceError
from tests.conftest import csrf_token, db_rows, sign_in_as
from tests.fixtures_emulator import ALEX

pytestmark = pytest.mark.emulator
MB = 1024 * 1024


@pytest.fixture
def app_overrides(emulator_config: dict[str, Any]) -> dict[str, Any]:
    """The emulator, a 1 MB upload limit and a 3 MB quota."""
    return {**emulator_config, "MAX_UPLOAD_MB": 1, "USER_QUOTA_MB": 3}


@pytest.fixture
def held(monkeypatch):
    """Jobs are recorded but not handed to the backend (a lost message); returns the ids."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(tasks, "enqueue_import", lambda job_id, uid: sent.append((job_id, uid)))
    return sent


def _stored(app) -> list[Path]:
    root = Path(app.config["STORAGE_DIR"])
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _job(app, uid: int, job_id: int) -> ImportJob:
    [job] = [j for j in db_rows(app, ImportJob, uid) if j.id == job_id]
    return job


def test_import_runs_as_a_job_and_links_the_file_as_synced(app, alice, emu):
    """The job streams the item into a new library file, records progress, links it synced."""
    data = b"p" * (300 * 1024)
    item = emu.modify_item(ALEX, "/drivesync/scan.pdf", data)
    with app.app_context(), user_scope(alice):
        job = imports.start_import(alice, item["id"])
        job_id = job.id
    job = _job(app, alice, job_id)
    assert (job.status, job.kind) == ("done", "new")
    assert job.bytes_done == job.bytes_total == len(data)
    [f] = db_rows(app, File, alice)
    assert job.file_id == f.id
    assert (f.original_name, f.onedrive_id) == ("scan.pdf", item["id"])
    assert f.onedrive_sync_status == "synced"
    assert Path(app.config["STORAGE_DIR"], f.stored_path).read_bytes() == data


def test_import_over_the_upload_limit_is_refused_before_download(app, alice, emu, held):
    """The size check happens at start: no job, no download."""
    item = emu.modify_item(ALEX, "/drivesync/big.bin", b"x" * (2 * MB))
    emu.clear_requests_log()
    with app.app_context(), user_scope(alice), pytest.raises(ServiceError, match="upload limit"):
        imports.start_import(alice, item["id"])
    assert not any(e["path"].endswith("/content") for e in emu.requests_log())
    assert db_rows(app, ImportJob, alice) == [] and held == []


def test_import_over_the_quota_is_refused(app, alice, emu, make_file, held):
    """An item that fits the upload limit but not the quota left is refused at start."""
    make_file(alice, "filler.bin", b"f" * (3 * MB - 100 * 1024))
    item = emu.modify_item(ALEX, "/drivesync/small.bin", b"s" * (500 * 1024))
    with app.app_context(), user_scope(alice), pytest.raises(ServiceError, match="storage is left"):
        imports.start_import(alice, item["id"])
    assert db_rows(app, ImportJob, alice) == []


def test_hash_mismatch_fails_the_job_and_keeps_nothing(app, alice, emu, monkeypatch):
    """Bytes whose quickXorHash differs from the item's are discarded; the job says why."""
    item = emu.modify_item(ALEX, "/drivesync/scan.pdf", b"scanned page")
    real = imports.folder_item

    def lying(client, integration, item_id):
        got = dict(real(client, integration, item_id))
        got["file"] = {"hashes": {"quickXorHash": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}}
        return got

    before = _stored(app)
    monkeypatch.setattr(imports, "folder_item", lying)
    with app.app_context(), user_scope(alice):
        job_id = imports.start_import(alice, item["id"]).id
    job = _job(app, alice, job_id)
    assert job.status == "failed" and job.error == imports.HASH_MISMATCH
    assert db_rows(app, File, alice) == []
    assert _stored(app) == before  # the downloaded bytes were discarded


def test_already_tracked_and_already_importing_are_refused(app, alice, emu, held):
    """A tracked item cannot be imported again; one active import per item."""
    item = emu.modify_item(ALEX, "/drivesync/a.txt", b"a")
    with app.app_context(), user_scope(alice):
        first = imports.start_import(alice, item["id"])
        with pytest.raises(Conflict, match="already being imported"):
            imports.start_import(alice, item["id"])
        imports.run_import(first.id, alice)
        with pytest.raises(Conflict, match="already in your library as a.txt"):
            imports.start_import(alice, item["id"])
    assert len(db_rows(app, File, alice)) == 1


def test_outside_the_sync_folder_is_not_found(app, alice, emu, held):
    """Only files directly in the sync folder are importable."""
    other = emu.modify_item(ALEX, "/elsewhere/secret.txt", b"s")
    folder = emu.modify_item(ALEX, "/drivesync/sub/x.txt", b"x")
    with app.app_context(), user_scope(alice):
        for item_id in (other["id"], folder["id"], "no-such-item"):
            with pytest.raises(NotFound):
                imports.start_import(alice, item_id)


def test_a_job_run_twice_makes_one_file(app, alice, emu, held):
    """A redelivered message finds the job claimed; a requeued finished job finds its file."""
    item = emu.modify_item(ALEX, "/drivesync/a.txt", b"abc")
    with app.app_context(), user_scope(alice):
        job_id = imports.start_import(alice, item["id"]).id
        imports.run_import(job_id, alice)
        imports.run_import(job_id, alice)  # a second delivery: not queued any more
        # As if the worker died after the file was made but before the job was closed.
        db.session.execute(
            db.update(ImportJob).where(ImportJob.id == job_id).values(status="queued")
        )
        db.session.commit()
        imports.run_import(job_id, alice)
    [f] = db_rows(app, File, alice)
    job = _job(app, alice, job_id)
    assert (job.status, job.file_id) == ("done", f.id)


def test_scheduler_recovers_a_lost_import_then_gives_up(app, alice, emu, held, monkeypatch):
    """A queued job whose message was lost is queued again; after MAX_REQUEUES it is closed."""
    item = emu.modify_item(ALEX, "/drivesync/a.txt", b"abc")
    with app.app_context(), user_scope(alice):
        job_id = imports.start_import(alice, item["id"]).id
    assert held == [(job_id, alice)]
    later = utcnow() + timedelta(seconds=app.config["RUN_REQUEUE_SECONDS"] + 1)
    with app.app_context():
        assert alice in scheduler.tick(later)
    assert held[-1] == (job_id, alice)
    assert _job(app, alice, job_id).requeues == 1
    # A running job whose heartbeat stopped is recovered too.
    with app.app_context(), user_scope(alice):
        db.session.execute(
            db.update(ImportJob)
            .where(ImportJob.id == job_id)
            .values(status="running", heartbeat_at=utcnow(), requeues=scheduler.MAX_REQUEUES)
        )
        db.session.commit()
    stale = utcnow() + timedelta(seconds=app.config["SYNC_STALE_SECONDS"] + 1)
    with app.app_context():
        assert alice in scheduler.tick(stale)
    job = _job(app, alice, job_id)
    assert (job.status, job.error) == ("failed", imports.INTERRUPTED)
    sent = len(held)
    with app.app_context():
        scheduler.tick(stale + timedelta(hours=1))  # a closed job is not recovered again
    assert len(held) == sent and _job(app, alice, job_id).status == "failed"


def test_a_recovered_job_runs_to_the_end(app, alice, emu, held):
    """Recovery hands the job to the backend again, and the run completes it."""
    item = emu.modify_item(ALEX, "/drivesync/a.txt", b"abc")
    with app.app_context(), user_scope(alice):
        job_id = imports.start_import(alice, item["id"]).id
    held.clear()
    with app.app_context():
        scheduler.tick(utcnow() + timedelta(seconds=app.config["RUN_REQUEUE_SECONDS"] + 1))
    assert held == [(job_id, alice)]
    with app.app_context():
        imports.run_import(job_id, alice)
    assert _job(app, alice, job_id).status == "done"


def test_version_import_replaces_the_library_bytes(app, alice, emu, make_file):
    """OneDrive's version of a remote_changed file becomes the library's new version, synced."""
    fid = make_file(alice, "notes.txt", b"old")
    client_post = app.test_client()
    sign_in_as(client_post, alice)
    client_post.post("/settings/onedrive/sync", data={"csrf_token": csrf_token(client_post)})
    [f] = db_rows(app, File, alice)
    assert f.onedrive_sync_status == "synced"
    emu.modify_item(ALEX, "/drivesync/notes.txt", b"edited on the phone")
    with app.app_context(), user_scope(alice):
        with pytest.raises(Conflict):
            imports.start_version_import(alice, fid)  # not remote_changed yet
        db.session.execute(
            db.update(File).where(File.id == fid).values(onedrive_sync_status="remote_changed")
        )
        db.session.commit()
        job_id = imports.start_version_import(alice, fid).id
    job = _job(app, alice, job_id)
    assert (job.status, job.kind, job.file_id) == ("done", "version", fid)
    [f] = db_rows(app, File, alice)
    assert (f.onedrive_sync_status, f.version) == ("synced", 2)
    assert Path(app.config["STORAGE_DIR"], f.stored_path).read_bytes() == b"edited on the phone"


def test_version_import_of_another_users_file_is_not_found(app, alice, make_user, make_file):
    """Others' files do not exist."""
    bob = make_user("bob@example.com")
    fid = make_file(bob, "b.txt", b"b")
    with app.app_context(), user_scope(alice), pytest.raises(NotFound):
        imports.start_version_import(alice, fid)


def test_progress_is_recorded_in_steps_not_per_chunk(app, alice, emu, monkeypatch):
    """bytes_done is written every PROGRESS_EVERY bytes (or heartbeat interval), not per chunk."""
    item = emu.modify_item(ALEX, "/drivesync/a.txt", b"abc")
    writes: list[int] = []
    with app.app_context(), user_scope(alice):
        monkeypatch.setattr(tasks, "enqueue_import", lambda *a: None)
        job_id = imports.start_import(alice, item["id"]).id
        got = imports._claim(job_id, alice)
        assert got is not None
        run, _ = got
        monkeypatch.setattr(run, "touch", lambda **v: writes.append(v["bytes_done"]))
        chunk = 1024 * 1024
        for n in range(1, 21):
            run.progress(n * chunk, 20 * chunk)
    assert writes == [4 * chunk, 8 * chunk, 12 * chunk, 16 * chunk, 20 * chunk]


def test_a_run_that_lost_its_claim_keeps_nothing(app, alice, emu, held):
    """A newer run (after recovery) owns the job: the older one's writes are refused."""
    item = emu.modify_item(ALEX, "/drivesync/a.txt", b"abc")
    with app.app_context(), user_scope(alice):
        job_id = imports.start_import(alice, item["id"]).id
        got = imports._claim(job_id, alice)
        assert got is not None
        old, _ = got
        db.session.execute(
            db.update(ImportJob).where(ImportJob.id == job_id).values(status="queued")
        )
        db.session.commit()
        imports.run_import(job_id, alice)  # the newer run finishes the job
        with pytest.raises(imports._Lost):
            old.touch(bytes_done=1)
        assert old.finish("failed", error="x") is False
    assert _job(app, alice, job_id).status == "done"


def test_a_failed_import_says_why_and_offers_to_try_again(app, alice, emu, monkeypatch, client):
    """The failed job's partial gives the reason and a Try again form for the same item."""
    item = emu.modify_item(ALEX, "/drivesync/scan.pdf", b"scanned page")
    real = imports.folder_item

    def lying(client_, integration, item_id):
        got = dict(real(client_, integration, item_id))
        got["file"] = {"hashes": {"quickXorHash": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}}
        return got

    monkeypatch.setattr(imports, "folder_item", lying)
    with app.app_context(), user_scope(alice):
        job_id = imports.start_import(alice, item["id"]).id
    body = client.get(
        f"/settings/onedrive/imports/{job_id}", headers={"HX-Request": "true"}
    ).get_data(as_text=True)
    assert "did not match its checksum" in body and "Try again" in body
    assert f'name="item_id" value="{item["id"]}"' in body
    monkeypatch.undo()
    with app.app_context(), user_scope(alice):
        assert imports.start_import(alice, item["id"]).status == "done"
