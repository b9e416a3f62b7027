"""A Celery worker serves its own metrics and logs its jobs with the enqueuing request's id."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from drivesync.observability import logs
from drivesync.scope import user_scope
from drivesync.services import sync
from tests.integration.test_sync_celery import (  # noqa: F401 - fixtures
    BROKER,
    QUEUE,
    celery_app,
    redis_required,
    token,
    user,
    wait_for_run,
    worker,
)
from tests.ops.conftest import free_port, sample, wait_for_port

pytestmark = [pytest.mark.celery, pytest.mark.slow, pytest.mark.emulator]


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """Send runs to Celery on our own queue."""
    return {"TASK_BACKEND": "celery", "CELERY_BROKER_URL": BROKER, "CELERY_QUEUE": QUEUE}


@pytest.fixture
def metrics_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """Have the next worker log JSON and serve /metrics on a free port (its env is ours)."""
    port = free_port()
    monkeypatch.setenv("DRIVESYNC_LOG_FORMAT", "json")
    monkeypatch.setenv("DRIVESYNC_WORKER_METRICS_ADDR", f"127.0.0.1:{port}")
    return port


@pytest.fixture
def metrics_worker(metrics_port: int, worker: subprocess.Popen[bytes]) -> int:  # noqa: F811
    """The Celery worker of the sync tests, started with ``metrics_port``; return the port."""
    wait_for_port(metrics_port, timeout=60)
    return metrics_port


def test_worker_serves_metrics_and_logs_the_request_id(
    app: Flask,
    celery_app: Any,  # noqa: F811
    metrics_worker: int,
    user: int,  # noqa: F811
    make_file: Callable[..., int],
    tmp_path: Path,
) -> None:
    """A run enqueued under a request id is logged by the worker with that id, and the worker's
    own /metrics count the Graph calls it made."""
    port = metrics_worker
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
