"""Nobody presses anything: a real Celery worker and a real ``celery beat`` sync uploads by
themselves, and a Redis restart that loses a queued run loses no file."""

from __future__ import annotations

import os
import shutil
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
from drivesync.models import File, SyncRun
from drivesync.scope import user_scope
from drivesync.services import sync
from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.fixtures_emulator import ALEX, CLIENT_ID, connected_user

pytestmark = [pytest.mark.celery, pytest.mark.slow, pytest.mark.emulator]

ROOT = Path(__file__).resolve().parents[2]
SHARED_BROKER = "redis://127.0.0.1:6379/0"


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def queue() -> str:
    """A queue name of our own: stray workers never take our messages."""
    return f"drivesync-sched-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """The shared Redis (tests that restart Redis use ``private_redis`` instead)."""
    if not _redis_answers(6379):
        pytest.skip("Redis is not running on 127.0.0.1:6379 (start it: see machine notes)")
    return SHARED_BROKER


@pytest.fixture
def token(emu: EmulatorAdmin) -> str:
    """A bearer token for Alex's drive."""
    return str(emu.mint_token(ALEX, CLIENT_ID)["access_token"])


@pytest.fixture
def app_overrides(queue: str) -> dict[str, Any]:
    """Celery on our own queue, short debounce, retries and requeues (seconds, not minutes)."""
    return {
        "TASK_BACKEND": "celery",
        "CELERY_QUEUE": queue,
        "AUTOSYNC_DEBOUNCE_SECONDS": 1,
        "RUN_REQUEUE_SECONDS": 2,
        "SCHEDULER_INTERVAL_SECONDS": 1,
    }


@pytest.fixture
def user(app: Flask, make_user: Callable[..., int], emulator: EmulatorServer, token: str) -> int:
    """A user connected to Alex's drive (automatic sync on, the default)."""
    client = GraphClient(lambda force: token, base_url=f"{emulator.url}/v1.0")
    return connected_user(app, make_user, client)


class Processes:
    """Celery worker and beat subprocesses sharing the test's database, stopped by PID."""

    def __init__(self, app: Flask, emulator: EmulatorServer, token: str, queue: str,
                 tmp_path: Path) -> None:  # fmt: skip
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DRIVESYNC_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
            "DRIVESYNC_STORAGE_DIR": app.config["STORAGE_DIR"],
            "DRIVESYNC_INSTANCE_DIR": str(tmp_path / "worker-instance"),
            "DRIVESYNC_TEST_EMULATOR_URL": emulator.url,
            "DRIVESYNC_TEST_EMULATOR_TOKEN": token,
            "DRIVESYNC_TEST_CELERY_QUEUE": queue,
            "DRIVESYNC_SCHEDULER_INTERVAL_SECONDS": "1",
            "DRIVESYNC_RUN_REQUEUE_SECONDS": "2",
            "DRIVESYNC_AUTOSYNC_DEBOUNCE_SECONDS": "1",
        }
        self.queue = queue

    def start(self, kind: str, broker: str) -> subprocess.Popen[bytes]:
        """Start a ``worker`` or a ``beat`` on ``broker``."""
        args = [sys.executable, "-m", "celery", "-A", "tests.celery_worker_app:celery_app", kind,
                "--loglevel=INFO"]  # fmt: skip
        if kind == "worker":
            args += ["--pool=threads", "--concurrency=2", "--without-gossip", "--without-mingle",
                     "--without-heartbeat", "-Q", self.queue]  # fmt: skip
        else:
            args += ["-s", str(self.tmp_path / f"beat-{len(self.procs)}"), "--max-interval", "1"]
        log = open(self.tmp_path / f"{kind}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=ROOT, env={**self.env, "DRIVESYNC_CELERY_BROKER_URL":
                                broker}, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def start_app(self, user_id: int | None = None) -> subprocess.Popen[bytes]:
        """Start a drivesync process on the thread backend with its embedded scheduler (as
        ``app.py`` runs it); with ``user_id`` it asks for that user's Sync All at start."""
        args = [sys.executable, "-m", "tests.thread_app_process"]
        args += [str(user_id)] if user_id is not None else []
        log = open(self.tmp_path / f"app-{len(self.procs)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        """Return the tail of every log, for a failure message."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp_path.glob("*.log"))
        )

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL)."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def processes(
    app: Flask, emulator: EmulatorServer, token: str, queue: str, tmp_path: Path
) -> Iterator[Processes]:
    """A place to start workers and beats; all of them stopped afterwards."""
    procs = Processes(app, emulator, token, queue, tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture
def celery_app(app: Flask, broker: str) -> Iterator[Any]:
    """The test process's Celery app (producer side) on ``broker``."""
    app.config["CELERY_BROKER_URL"] = broker
    tasks.init_app(app)
    yield app.extensions["celery"]
    app.extensions["celery"].close()


def wait_synced(app: Flask, uid: int, procs: Processes, timeout: float = 90) -> list[File]:
    """Poll until every file of the user is synced; fail with the processes' logs otherwise."""
    deadline = time.monotonic() + timeout
    rows: list[File] = []
    while time.monotonic() < deadline:
        with app.app_context(), user_scope(uid):
            rows = list(db.session.execute(db.select(File)).scalars())
            if rows and all(f.onedrive_sync_status == "synced" for f in rows):
                return rows
        time.sleep(0.3)
    states = [(f.original_name, f.onedrive_sync_status, f.onedrive_error) for f in rows]
    pytest.fail(f"not synced after {timeout}s: {states}\n{procs.logs()}")


def wait_run_finished(app: Flask, uid: int, run_id: int, procs: Processes) -> SyncRun:
    """Poll until the run has ended (its files may be synced a moment before)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with app.app_context(), user_scope(uid):
            run = db.session.get(SyncRun, run_id)
            assert run is not None
            if run.finished:
                return run
        time.sleep(0.2)
    pytest.fail(f"run {run_id} did not finish\n{procs.logs()}")


def assert_on_onedrive(emu: EmulatorAdmin, rows: list[File]) -> None:
    """Every row's bytes are on OneDrive, hash for hash."""
    remote = {i["name"]: i for i in emu.list_items(ALEX) if not i["folder"]}
    for f in rows:
        assert remote[f.original_name]["quickXorHash"] == f.quick_xor_hash


def test_upload_is_synced_by_the_wake_up_alone(
    app: Flask, celery_app: Any, processes: Processes, broker: str, emu: EmulatorAdmin,
    user: int, make_file: Callable[..., int],
) -> None:  # fmt: skip
    """Two uploads, a worker, no beat, no button: the debounced wake-up makes one run of both."""
    processes.start("worker", broker)
    make_file(user, "a.txt", b"first upload")
    make_file(user, "b.txt", b"second upload")
    rows = wait_synced(app, user, processes)
    assert_on_onedrive(emu, rows)
    with app.app_context(), user_scope(user):
        runs = list(db.session.execute(db.select(SyncRun)).scalars())
    assert [r.total for r in runs] == [2]
    assert wait_run_finished(app, user, runs[0].id, processes).status == "done"


def test_beat_picks_up_a_lost_wake_up(
    app: Flask, celery_app: Any, processes: Processes, broker: str, emu: EmulatorAdmin,
    user: int, make_file: Callable[..., int], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The wake-up never leaves this process; celery beat's tick finds the due time and syncs."""
    monkeypatch.setattr(tasks, "wake_user", lambda user_id, delay: None)  # lost
    make_file(user, "lost.txt", b"its wake-up was lost")
    processes.start("worker", broker)
    time.sleep(3)  # the worker alone does nothing: no message was sent
    with app.app_context(), user_scope(user):
        assert db.session.execute(db.select(File.onedrive_sync_status)).scalar_one() == "not_synced"
    processes.start("beat", broker)
    assert_on_onedrive(emu, wait_synced(app, user, processes))


class PrivateRedis:
    """A redis-server of our own (no persistence, like bin/services) on a free port."""

    def __init__(self, tmp_path: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                     "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while not _redis_answers(self.port):
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop it by its PID; everything it held is gone."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        """Stop and start again, empty."""
        self.stop()
        self.start()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis for a test that restarts it (never the shared one)."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_run_lost_in_a_redis_restart_is_queued_again_and_synced(
    app: Flask, processes: Processes, emu: EmulatorAdmin, user: int, private_redis: PrivateRedis,
    make_file: Callable[..., int], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Redis restarts (no persistence) with a run queued: the next tick re-queues it; synced."""
    app.config["CELERY_BROKER_URL"] = private_redis.url
    tasks.init_app(app)
    try:
        monkeypatch.setattr(tasks, "wake_user", lambda user_id, delay: None)
        make_file(user, "survivor.bin", os.urandom(700 * 1024))
        with app.app_context(), user_scope(user):
            run = sync.request_sync(user)  # the message waits in Redis: no worker yet
            assert run.status == "queued"
            run_id = run.id
        private_redis.restart()  # the queued message is gone
        processes.start("worker", private_redis.url)
        processes.start("beat", private_redis.url)
        rows = wait_synced(app, user, processes)
    finally:
        app.extensions["celery"].close()
    assert_on_onedrive(emu, rows)
    run = wait_run_finished(app, user, run_id, processes)
    assert run.status == "done" and run.requeues >= 1


def test_warm_shutdown_finishes_uploads_and_puts_the_run_back(
    app: Flask, celery_app: Any, processes: Processes, broker: str, emu: EmulatorAdmin,
    user: int, make_file: Callable[..., int], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """SIGTERM mid-run: no file stays syncing, the run goes back to the queue, the next worker
    ends it, and every file arrives once."""
    monkeypatch.setattr(tasks, "wake_user", lambda user_id, delay: None)
    for i in range(8):
        make_file(user, f"part-{i}.bin", os.urandom(1024 * 1024))
    emu.throttle(every=2, retry_after=1)  # a busy OneDrive: every upload takes a second or more
    first = processes.start("worker", broker)
    with app.app_context(), user_scope(user):
        run_id = sync.request_sync(user).id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with app.app_context(), user_scope(user):
            synced = db.session.execute(
                db.select(File.id).where(File.onedrive_sync_status == "synced")
            ).all()
        if synced:
            break
        time.sleep(0.1)
    first.terminate()  # SIGTERM: Celery's warm shutdown
    assert first.wait(timeout=60) == 0, processes.logs()
    with app.app_context(), user_scope(user):
        states = list(db.session.execute(db.select(File.onedrive_sync_status)).scalars())
        run = db.session.get(SyncRun, run_id)
        assert run is not None
        assert "syncing" not in states
        assert run.status == "queued", (run.status, states)  # released, not abandoned
        assert "not_synced" in states
    emu.clear_faults()
    processes.start("worker", broker)
    assert_on_onedrive(emu, wait_synced(app, user, processes))
    run = wait_run_finished(app, user, run_id, processes)
    assert (run.status, run.succeeded) == ("done", 8)


def test_a_second_beat_in_the_same_interval_does_nothing(
    app: Flask, broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ticks within one interval (two beats by mistake): the Redis lock lets one through."""
    from drivesync.services import scheduler

    ticks: list[int] = []
    monkeypatch.setattr(scheduler, "tick", lambda: ticks.append(1) or [])
    app.config["CELERY_BROKER_URL"] = broker
    with app.app_context():
        tasks.run_tick()
        tasks.run_tick()
        assert ticks == [1]
        time.sleep(1.0)  # SCHEDULER_INTERVAL_SECONDS is 1 here: the next interval's tick runs
        tasks.run_tick()
    assert ticks == [1, 1]


def _fragment_starts(entries: list[dict[str, Any]]) -> list[int]:
    """The first byte of every fragment PUT (``Content-Range: bytes a-b/n``) the emulator took."""
    starts = []
    for e in entries:
        rng = e.get("content_range") or ""
        if e["method"] == "PUT" and rng.startswith("bytes ") and not e.get("cut"):
            starts.append(int(rng[len("bytes ") :].split("-")[0]))
    return starts


def _kill_mid_upload_and_resume(
    app: Flask, processes: Processes, emu: EmulatorAdmin, user: int,
    make_file: Callable[..., int], start: Callable[[bool], subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    """Upload 40 MiB in 5 MiB fragments, SIGKILL the process that runs it after two or more
    fragments were acknowledged, start another, and check how the file ends."""
    processes.env |= {"DRIVESYNC_UPLOAD_FRAGMENT_MB": "5", "DRIVESYNC_SYNC_STALE_SECONDS": "3"}
    fid = make_file(user, "scan-40mib.bin", os.urandom(40 * 1024 * 1024))
    emu.set_latency(300)  # every fragment takes a while: the kill lands mid-upload
    first = start(True)
    acked, deadline = 0, time.monotonic() + 90
    while time.monotonic() < deadline:
        with app.app_context(), user_scope(user):
            f = db.session.get(File, fid)
            assert f is not None
            acked = f.bytes_sent if f.upload_url else 0
        if acked >= 10 * 1024 * 1024:
            break
        time.sleep(0.05)
    assert acked >= 10 * 1024 * 1024, processes.logs()
    first.kill()  # SIGKILL: no warm shutdown, no release of the claim
    first.wait(timeout=30)
    killed_at = len(emu.requests_log())
    with app.app_context(), user_scope(user):
        f = db.session.get(File, fid)
        assert f is not None and f.onedrive_sync_status == "syncing"  # left behind by the dead
        acked = f.bytes_sent  # the offset the database knows was acknowledged
    emu.set_latency(0)
    start(False)  # nobody presses anything: the scheduler's tick finds the dead claim and run
    [row] = wait_synced(app, user, processes, timeout=120)
    assert_on_onedrive(emu, [row])
    after = _fragment_starts(emu.requests_log()[killed_at:])
    assert after and min(after) >= acked, (acked, after)
    everything = _fragment_starts(emu.requests_log())
    below = [s for s in everything if s < acked]
    assert len(below) == len(set(below)), below  # each acknowledged fragment was sent once


def test_worker_killed_mid_upload_resumes_without_resending(
    app: Flask, celery_app: Any, processes: Processes, broker: str, emu: EmulatorAdmin,
    user: int, make_file: Callable[..., int], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A Celery worker SIGKILLed in the middle of a 40 MiB upload: beat's tick recovers the
    claim and the run, a new worker resumes the stored session, the file ends synced and
    hash-verified, and no byte below the last acknowledged fragment is sent again."""
    monkeypatch.setattr(tasks, "wake_user", lambda user_id, delay: None)  # the run is explicit

    def start(first: bool) -> subprocess.Popen[bytes]:
        if first:
            worker = processes.start("worker", broker)
            with app.app_context(), user_scope(user):
                sync.request_sync(user)
            return worker
        processes.start("beat", broker)
        return processes.start("worker", broker)

    _kill_mid_upload_and_resume(app, processes, emu, user, make_file, start)


def test_app_process_killed_mid_upload_resumes_without_resending(
    app: Flask, processes: Processes, emu: EmulatorAdmin, user: int,
    make_file: Callable[..., int], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The embedded default (thread backend, in-process scheduler) SIGKILLed mid-upload and
    started again: its own scheduler resumes the upload where the acknowledged bytes end."""
    monkeypatch.setattr(tasks, "wake_user", lambda user_id, delay: None)
    app.config["TASK_BACKEND"] = "eager"  # this process only uploads the file; it syncs nothing

    def start(first: bool) -> subprocess.Popen[bytes]:
        return processes.start_app(user if first else None)

    _kill_mid_upload_and_resume(app, processes, emu, user, make_file, start)
