"""The embedded scheduler against the emulator: an outage longer than one request's retries
ends with the file synced, and nobody pressed anything."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from drivesync import tasks
from drivesync.extensions import db
from drivesync.graph.client import GraphClient
from drivesync.graph.drive import GraphDrive
from drivesync.models import File
from drivesync.scope import user_scope
from drivesync.services import scheduler
from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.fixtures_emulator import ALEX, CLIENT_ID, connected_user

pytestmark = [pytest.mark.slow, pytest.mark.emulator]

BURST = 15  # 503 answers in a row: more than one request's retries (graph/retry.py: 6 tries)


@pytest.fixture
def token(emu: EmulatorAdmin) -> str:
    """A bearer token for Alex's drive."""
    return str(emu.mint_token(ALEX, CLIENT_ID)["access_token"])


@pytest.fixture
def app_overrides(
    emulator_config: dict[str, Any], emulator: EmulatorServer, token: str
) -> dict[str, Any]:
    """The embedded default: thread backend, first retry after about a second, short debounce."""
    url = emulator.url

    def drive_factory(user_id: int) -> GraphDrive:
        return GraphDrive(GraphClient(lambda force: token, base_url=f"{url}/v1.0"))

    return {
        **emulator_config,
        "TASK_BACKEND": "thread",
        "SYNC_DRIVE_FACTORY": drive_factory,
        "SYNC_RETRY_BASE_SECONDS": 1,
        "AUTOSYNC_DEBOUNCE_SECONDS": 1,
    }


@pytest.fixture
def user(app: Flask, make_user: Callable[..., int], emulator: EmulatorServer, token: str) -> int:
    """A user connected to Alex's drive, automatic sync on."""
    client = GraphClient(lambda force: token, base_url=f"{emulator.url}/v1.0")
    return connected_user(app, make_user, client)


@pytest.fixture
def running_scheduler(app: Flask) -> Iterator[scheduler.InProcessScheduler]:
    """The embedded scheduler thread, ticking every second; stopped afterwards."""
    thread = scheduler.start_in_process(app, interval=1)
    try:
        yield thread
    finally:
        scheduler.stop_in_process()
        tasks.shutdown(wait=True)


def test_outage_longer_than_one_requests_retries_ends_synced(
    app: Flask, emu: EmulatorAdmin, user: int, make_file: Callable[..., int],
    running_scheduler: scheduler.InProcessScheduler,
) -> None:  # fmt: skip
    """A burst of 503s outlasts the pacer; the file fails transiently, is retried, ends synced."""
    emu.clear_requests_log()
    emu.fail(503, count=BURST, retry_after=1)
    fid = make_file(user, "during-outage.txt", b"uploaded while OneDrive was down")
    seen: set[str] = set()
    deadline = time.monotonic() + 150
    status = ""
    while time.monotonic() < deadline:
        with app.app_context(), user_scope(user):
            f = db.session.get(File, fid)
            assert f is not None
            status = f.onedrive_sync_status
            seen.add(status)
            if status == "synced":
                break
        time.sleep(0.2)
    assert status == "synced", f"states seen: {seen}"
    assert "error" in seen  # the outage did outlast one request's retries
    log = emu.requests_log()
    assert sum(1 for r in log if r["status"] == 503) == BURST
    remote = {i["name"]: i for i in emu.list_items(ALEX) if not i["folder"]}
    with app.app_context(), user_scope(user):
        f = db.session.get(File, fid)
        assert f is not None
        assert remote[f.original_name]["quickXorHash"] == f.quick_xor_hash
        assert (f.sync_attempts, f.failure_kind, f.next_attempt_at) == (0, None, None)
