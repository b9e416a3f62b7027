"""The sync engine over real sockets against the bundled OneDrive emulator, faults switched on."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
from flask import Flask

from drivesync.extensions import db
from drivesync.graph.client import GraphClient
from drivesync.graph.drive import GraphDrive
from drivesync.graph.errors import AuthError
from drivesync.graph.retry import Pacer
from drivesync.models import File, Integration
from drivesync.scope import user_scope
from drivesync.services import library, runs, sync
from drivesync.services.storage import LocalStorage
from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.fakes import WorkerKilled
from tests.fixtures_emulator import ALEX, CLIENT_ID, connected_user

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

MiB = 1024 * 1024


class Tokens:
    """A token provider like the service's: a forced refresh fails once consent is revoked."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.revoked = False

    def __call__(self, force: bool = False) -> str:
        if force and self.revoked:
            raise AuthError("invalid_grant", code="invalid_grant")
        return self.token


@pytest.fixture
def tokens(emu: EmulatorAdmin) -> Tokens:
    """A bearer token for Alex's drive."""
    return Tokens(emu.mint_token(ALEX, CLIENT_ID)["access_token"])


def graph_client(emulator: EmulatorServer, tokens: Tokens) -> GraphClient:
    """Return a Graph client on the emulator with a fast pacer (the faults still bite)."""
    return GraphClient(tokens, base_url=f"{emulator.url}/v1.0",
                       pacer=Pacer(base=0.02, cap=0.2, max_total_wait=20))  # fmt: skip


@pytest.fixture
def app_overrides(emulator: EmulatorServer, tokens: Tokens) -> dict[str, Any]:
    """Build every drive from a fresh GraphClient on the emulator; 5 MiB fragments."""
    return {
        "SYNC_DRIVE_FACTORY": lambda user_id: GraphDrive(graph_client(emulator, tokens)),
        "UPLOAD_FRAGMENT_MB": 5,
        "SYNC_CONCURRENCY": 3,
    }


@pytest.fixture
def user(
    app: Flask, make_user: Callable[..., int], emulator: EmulatorServer, tokens: Tokens
) -> int:
    """A user connected to Alex's drive, with the target folder created there."""
    return connected_user(app, make_user, graph_client(emulator, tokens))


def remote_by_name(emu: EmulatorAdmin) -> dict[str, dict[str, Any]]:
    """Return Alex's files in the drivesync folder, by name."""
    return {
        i["name"]: i
        for i in emu.list_items(ALEX)
        if not i["folder"] and i["path"].lower().startswith("/drivesync/")
    }


def files(app: Flask, uid: int) -> list[File]:
    """Return the user's file rows."""
    with app.app_context(), user_scope(uid):
        return list(db.session.execute(db.select(File).order_by(File.id)).scalars())


def test_run_with_faults_uploads_exact_bytes(
    app: Flask, emu: EmulatorAdmin, user: int, make_file: Callable[..., int]
) -> None:
    """A 25 MiB file and small ones arrive intact through 429s, 503s and a dropped fragment."""
    make_file(user, "big.bin", os.urandom(25 * MiB))
    for i in range(5):
        make_file(user, f"small-{i}.txt", os.urandom(1000 + i))
    make_file(user, "empty.txt", b"")
    emu.throttle(every=5, retry_after=0)
    emu.fail(503, count=3, retry_after=0)
    emu.drop_connection(1)
    with app.app_context(), user_scope(user):
        run = sync.request_sync(user)
        assert (run.status, run.total, run.succeeded, run.failed) == ("done", 7, 7, 0)
        assert run.bytes_done == run.bytes_total == 25 * MiB + sum(1000 + i for i in range(5))
    emu.clear_faults()
    remote = remote_by_name(emu)
    for f in files(app, user):
        assert f.onedrive_sync_status == "synced", (f.original_name, f.onedrive_error)
        item = remote[f.original_name]
        assert (item["id"], item["size"]) == (f.onedrive_id, f.size)
        assert item["quickXorHash"] == f.quick_xor_hash
        assert f.onedrive_path == f"/drivesync/{f.original_name}"
    log = emu.requests_log()
    assert {429, 503} <= {r["status"] for r in log}, "the faults never fired"
    uploads = [r for r in log if "/_upload/" in r["path"]]
    assert uploads and not any(r["had_authorization_header"] for r in uploads)


def test_conflict_then_replace_over_http(
    app: Flask, emu: EmulatorAdmin, user: int, make_file: Callable[..., int]
) -> None:
    """A OneDrive-side edit plus a local replace is a conflict; Replace then wins over HTTP."""
    fid = make_file(user, "notes.txt", b"version 1")
    with app.app_context(), user_scope(user):
        sync.request_sync(user)
    emu.modify_item(ALEX, "/drivesync/notes.txt", b"edited in the browser")
    with app.app_context(), user_scope(user):
        store = LocalStorage(app.config["STORAGE_DIR"])
        incoming = store.new_incoming()
        incoming.write(b"version 2, local")
        library.replace_file(user, fid, incoming, store)
        sync.request_sync(user)
        f = db.session.get(File, fid)
        assert f is not None and f.onedrive_sync_status == "conflict"
        assert remote_by_name(emu)["notes.txt"]["size"] == len(b"edited in the browser")
        sync.resolve_conflict(user, fid, "replace")
        db.session.expire_all()
        f = db.session.get(File, fid)
        assert f is not None and f.onedrive_sync_status == "synced"
        assert remote_by_name(emu)["notes.txt"]["quickXorHash"] == f.quick_xor_hash


def test_revoked_consent_stops_the_run(
    app: Flask, emu: EmulatorAdmin, tokens: Tokens, user: int, make_file: Callable[..., int]
) -> None:
    """Revoked consent stops the run, flags the integration and leaves files not_synced."""
    for i in range(4):
        make_file(user, f"f{i}.txt", b"data")
    emu.revoke_consent(ALEX)
    tokens.revoked = True
    with app.app_context(), user_scope(user):
        run = sync.request_sync(user)
        assert run.status == "stopped" and run.succeeded == 0
        integration = db.session.execute(db.select(Integration)).scalar_one()
        assert integration.status == "needs_reauth"
    assert all(
        (f.onedrive_sync_status, f.onedrive_error) == ("not_synced", None) for f in files(app, user)
    )
    assert remote_by_name(emu) == {}


class DyingSession(requests.Session):
    """The upload host's session of a worker that is killed once ``kill_after`` fragments landed.

    Records the first byte of every fragment PUT, so a test can prove nothing below the last
    acknowledged fragment is sent twice.
    """

    def __init__(self, log: list[tuple[int, int]], kill_after: int | None) -> None:
        super().__init__()
        self.log = log
        self.kill_after = kill_after
        self.accepted = 0

    def put(self, url: str | bytes, data: Any = None, **kwargs: Any) -> requests.Response:
        """Send a fragment (or die before sending it)."""
        if self.kill_after is not None and self.accepted >= self.kill_after:
            raise WorkerKilled()
        start = int(kwargs["headers"]["Content-Range"].split()[1].split("-")[0])
        resp = super().put(url, data=data, **kwargs)
        self.log.append((start, resp.status_code))
        self.accepted += resp.status_code == 202
        return resp


def test_killed_upload_resumes_from_the_acknowledged_offset(
    app: Flask,
    emulator: EmulatorServer,
    emu: EmulatorAdmin,
    tokens: Tokens,
    user: int,
    make_file: Callable[..., int],
) -> None:
    """A worker killed mid-upload is recovered; the next run resumes the stored session."""
    data = os.urandom(20 * MiB)
    fid = make_file(user, "scan.pdf", data)
    sent: list[tuple[int, int]] = []
    kill_after: list[int | None] = [2]  # the first worker dies after two 5 MiB fragments

    def drive(user_id: int) -> GraphDrive:
        client = graph_client(emulator, tokens)
        client.plain_session = DyingSession(sent, kill_after.pop(0) if kill_after else None)
        return GraphDrive(client)

    app.config["SYNC_DRIVE_FACTORY"] = drive
    emu.clear_requests_log()
    with app.app_context(), user_scope(user):
        first = sync.request_sync(user)
        assert first.status == "running"  # left as a killed process leaves it: file claimed
        f = db.session.get(File, fid)
        assert f is not None and (f.onedrive_sync_status, f.bytes_sent) == ("syncing", 10 * MiB)
        acknowledged = f.bytes_sent
        # The dead worker's heartbeat stopped long ago.
        f.heartbeat_at = f.heartbeat_at - timedelta(seconds=app.config["SYNC_STALE_SECONDS"] + 1)
        db.session.commit()
        run = runs.execute_run(first.id, user)  # the scheduler's requeue of the stale run
        assert run is not None and (run.status, run.succeeded) == ("done", 1)
        db.session.expire_all()
        f = db.session.get(File, fid)
        assert f is not None and f.onedrive_sync_status == "synced"
    assert sent[:2] == [(0, 202), (5 * MiB, 202)]
    after_kill = [start for start, _status in sent[2:]]
    assert after_kill == [10 * MiB, 15 * MiB]  # nothing below the acknowledged offset again
    assert min(after_kill) >= acknowledged
    creates = [r for r in emu.requests_log() if r["path"].endswith("/createUploadSession")]
    assert len(creates) == 1  # the stored session was resumed, not replaced
    remote = remote_by_name(emu)["scan.pdf"]
    assert (remote["size"], remote["quickXorHash"]) == (len(data), f.quick_xor_hash)
