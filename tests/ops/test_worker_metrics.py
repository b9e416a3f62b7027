"""A Celery worker serves its own metrics and logs its jobs with the enqueuing request's id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from drivesync.observability import logs
from drivesync.scope import user_scope
from drivesync.services import sync
from onedrive_emulator.server import EmulatorServer
from tests.integration.test_sync_celery import (  # noqa: F401 - fixtures
    BROKER,
    QUEUE,
    ROOT,
    celery_app,
    redis_required,
    token,
    user,
    wait_for_run,
)
from tests.ops.conftest import free_port, sample, wait_for_port

pytestmark = [pytest.mark.celery, pytest.mark.slow, pytest.mark.emulator]


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """Send runs to Celery on our own queue."""
    return {"TASK_BACKEND": "celery", "CELERY_BROKER_URL": BROKER, "CELERY_QUEUE": QUEUE}


@pytest.fixture
def metrics_worker(
    app: Flask,
    emulator: EmulatorServer,
    token: str,  # noqa: F811
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A Celery worker logging JSON and serving /metrics on a free port; stopped by PID."""
    port = free_port()
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
        "DRIVESYNC_LOG_FORMAT": "json",
        "DRIVESYNC_WORKER_METRICS_ADDR": f"127.0.0.1:{port}",
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.celery_worker_app:celery_app", "worker",
         "--pool=threads", "--concurrency=2", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-Q", QUEUE, "--loglevel=INFO"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=60)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_worker_serves_metrics_and_logs_the_request_id(
    app: Flask,
    celery_app: Any,  # noqa: F811
    metrics_worker: tuple[subprocess.Popen[bytes], int],
    user: int,  # noqa: F811
    make_file: Callable[..., int],
    tmp_path: Path,
) -> None:
    """A run enqueued under a request id is logged by the worker with that id, and the worker's
    own /metrics count the Graph calls it made."""
    _, port = metrics_worker
    make_file(user, "a.txt", b"hello")
    with app.app_context(), user_scope(user), logs.bound("rid-from-the-web"):
        run_id = sync.request_sync(user).id
    run = wait_for_run(app, user, run_id, tmp_path)
    assert run.status == "done", run.error
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    graph_ok = sum(sample(text, "drivesync_graph_requests_total", status=s) for s in ("200", "201"))
    assert graph_ok >= 1
    records = []
    for line in (tmp_path / "worker.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    assert any(r.get("request_id") == "rid-from-the-web" for r in records), records[-5:]
