"""Sync runs executed by a real Celery worker process on Redis, uploading to the emulator."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from drivesync import tasks
from drivesync.extensions import db
from drivesync.graph.client import GraphClient
from drivesync.models import File, Integration
from drivesync.scope import user_scope
from drivesync.services import sync
from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.fixtures_emulator import ALEX, CLIENT_ID, connected_user

pytestmark = [pytest.mark.celery, pytest.mark.slow, pytest.mark.emulator]

ROOT = Path(__file__).resolve().parents[2]
BROKER = "redis://127.0.0.1:6379/0"
QUEUE = f"drivesync-test-{uuid.uuid4().hex[:12]}"  # stray workers never steal our tasks


@pytest.fixture
def redis_required() -> None:
    """Skip when Redis is not there (bin/services starts it)."""
    if not redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (start it: see machine notes)")


def redis_up() -> bool:
    """Return whether Redis answers on 127.0.0.1:6379."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def token(emu: EmulatorAdmin, redis_required: None) -> str:
    """A bearer token for Alex's drive."""
    return str(emu.mint_token(ALEX, CLIENT_ID)["access_token"])


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """Send runs to Celery on our own queue."""
    return {"TASK_BACKEND": "celery", "CELERY_BROKER_URL": BROKER, "CELERY_QUEUE": QUEUE}


@pytest.fixture
def celery_app(app: Flask) -> Iterator[Any]:
    """The test process's Celery app (producer side); its connections closed afterwards."""
    if "celery" not in app.extensions:
        tasks.init_app(app)
    yield app.extensions["celery"]
    app.extensions["celery"].close()


@pytest.fixture
def worker(
    app: Flask, emulator: EmulatorServer, token: str, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker subprocess sharing our database and storage folder; stopped by PID."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DRIVESYNC_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "DRIVESYNC_STORAGE_DIR": app.config["STORAGE_DIR"],
        "DRIVESYNC_INSTANCE_DIR": str(tmp_path / "worker-instance"),
        "DRIVESYNC_CELERY_BROKER_URL": BROKER,
        "DRIVESYNC_TEST_EMULATOR_URL": emulator.url,
        "DRIVESYNC_TEST_EMULATOR_TOKEN": token,
        "DRIVESYNC_TEST_CELERY_QUEUE": QUEUE,
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_worker_app:celery_app", "worker",
         "--pool=threads", "--concurrency=2", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-Q", QUEUE, "--loglevel=INFO"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture
def user(app: Flask, make_user: Callable[..., int], emulator: EmulatorServer, token: str) -> int:
    """A user connected to Alex's drive, with the target folder created there."""
    client = GraphClient(lambda force: token, base_url=f"{emulator.url}/v1.0")
    return connected_user(app, make_user, client)


def wait_for_run(app: Flask, uid: int, run_id: int, tmp_path: Path, timeout: float = 90) -> Any:
    """Poll the run row until the worker finishes it; fail with the worker's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.app_context(), user_scope(uid):
            run = sync.run_status(uid, run_id)
            assert run is not None
            if run.finished:
                return run
        time.sleep(0.2)
    log = (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
    pytest.fail(f"the worker did not finish run {run_id} in {timeout}s; its log:\n{log}")


def test_celery_worker_executes_a_run(
    app: Flask,
    celery_app: Any,
    worker: subprocess.Popen[bytes],
    emu: EmulatorAdmin,
    user: int,
    make_file: Callable[..., int],
    tmp_path: Path,
) -> None:
    """Sync All queued on Redis is executed by the worker process and lands on OneDrive intact."""
    make_file(user, "big.bin", os.urandom(6 * 1024 * 1024))
    for i in range(3):
        make_file(user, f"note-{i}.txt", f"note {i}".encode())
    with app.app_context(), user_scope(user):
        run = sync.request_sync(user)
        assert run.status == "queued" and run.total == 4
        run_id = run.id
    run = wait_for_run(app, user, run_id, tmp_path)
    assert (run.status, run.succeeded, run.failed) == ("done", 4, 0), run.error
    remote = {i["name"]: i for i in emu.list_items(ALEX) if not i["folder"]}
    with app.app_context(), user_scope(user):
        rows = list(db.session.execute(db.select(File)).scalars())
        for f in rows:
            assert f.onedrive_sync_status == "synced"
            assert remote[f.original_name]["quickXorHash"] == f.quick_xor_hash
        integration = db.session.execute(db.select(Integration)).scalar_one()
        assert integration.last_sync_at is not None
    assert worker.poll() is None, "the worker died"
