"""Logs: JSON records that parse and carry the request id, text in development, ids into jobs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from drivesync import create_app
from drivesync.observability import logs
from tests.conftest import app_config
from tests.ops.conftest import dispose

log = logging.getLogger("drivesync.test_ops")


@pytest.fixture
def json_app(tmp_path: Path, database_url: str) -> Iterator[tuple[Flask, io.StringIO]]:
    """An app logging JSON into a buffer, with a route that logs."""
    app = create_app(app_config(tmp_path, database_url, LOG_FORMAT="json", LOG_LEVEL="INFO"))

    @app.get("/_log_probe")
    def probe() -> str:
        log.info("probe answered for %s", "someone")
        return "ok"

    buffer = io.StringIO()
    handler = logs.installed_handler()
    assert handler is not None
    old = handler.setStream(buffer)
    yield app, buffer
    handler.setStream(old)
    dispose(app)


def _records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_json_records_parse_and_carry_the_request_id(json_app):
    """Every line is a JSON object; the request's record carries the id echoed in the header."""
    app, buffer = json_app
    r = app.test_client().get("/_log_probe")
    rid = r.headers["X-Request-ID"]
    assert len(rid) == 32
    records = _records(buffer)
    probe = [rec for rec in records if rec["message"] == "probe answered for someone"]
    assert probe and probe[0]["request_id"] == rid
    assert {"time", "level", "name", "message", "request_id"} <= probe[0].keys()
    assert probe[0]["level"] == "INFO"


def test_each_request_gets_its_own_id(json_app):
    """Two requests get two different generated ids."""
    app, _ = json_app
    client = app.test_client()
    assert (
        client.get("/healthz").headers["X-Request-ID"]
        != client.get("/healthz").headers["X-Request-ID"]
    )


def test_x_request_id_is_ignored_without_a_trusted_proxy(json_app):
    """With PROXY_COUNT 0 a client cannot choose its request id."""
    app, _ = json_app
    r = app.test_client().get("/healthz", headers={"X-Request-ID": "chosen-by-client"})
    assert r.headers["X-Request-ID"] != "chosen-by-client"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123_DEF.4:5", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("has space", False),
        ("tab\there", False),
        ("é-accent", False),
        ("<script>", False),
    ],
)
def test_x_request_id_from_a_trusted_proxy_is_validated(json_app, sent, kept):
    """Behind a trusted proxy a well-formed X-Request-ID is kept; anything else is replaced."""
    app, buffer = json_app
    app.config["PROXY_COUNT"] = 1
    r = app.test_client().get("/_log_probe", headers={"X-Request-ID": sent})
    assert (r.headers["X-Request-ID"] == sent) is kept
    probe = [rec for rec in _records(buffer) if rec["message"].startswith("probe answered")]
    assert probe[0]["request_id"] == r.headers["X-Request-ID"]


def test_text_format_in_development(tmp_path: Path, database_url: str):
    """Development logs are one readable line with the request id in brackets."""
    dispose(create_app(app_config(tmp_path, database_url, LOG_FORMAT="text")))
    handler = logs.installed_handler()
    buffer = io.StringIO()
    old = handler.setStream(buffer)
    try:
        with logs.bound("rid-1"):
            log.warning("hello")
    finally:
        handler.setStream(old)
    line = buffer.getvalue().strip()
    assert line.endswith("WARNING [rid-1] drivesync.test_ops: hello")


def test_production_defaults_to_json():
    """DRIVESYNC_ENV=production picks JSON; development picks text."""
    from drivesync.config import load_config

    assert load_config({"DRIVESYNC_ENV": "production"})["LOG_FORMAT"] == "json"
    assert load_config({})["LOG_FORMAT"] == "text"


def test_thread_jobs_keep_the_enqueuing_request_id():
    """A job handed to a thread pool through carry() logs with the caller's request id."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool, logs.bound("enqueuer-id"):
        assert pool.submit(logs.carry(logs.current_request_id)).result() == "enqueuer-id"
        assert pool.submit(logs.current_request_id).result() is None  # without carry: none


def test_celery_messages_carry_the_request_id():
    """Publishing a task inside a request adds the id header; the worker binds it while running."""
    from types import SimpleNamespace

    headers: dict[str, Any] = {}
    with logs.bound("rid-celery"):
        logs._publish(headers=headers)
    assert headers == {logs.TASK_HEADER: "rid-celery"}
    task = SimpleNamespace(request=SimpleNamespace(**headers))
    logs._prerun(task_id="t1", task=task)
    try:
        assert logs.current_request_id() == "rid-celery"
    finally:
        logs._postrun(task_id="t1")
    assert logs.current_request_id() is None


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DRIVESYNC_LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"DRIVESYNC_LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"DRIVESYNC_WORKER_METRICS_ADDR": "localhost"}, "WORKER_METRICS_ADDR"),
    ],
)
def test_bad_operations_settings_stop_the_app(env, key):
    """Unknown log formats and levels, and a worker metrics address without a port, are refused."""
    from drivesync.config import ConfigError, load_config, validate_config

    with pytest.raises(ConfigError, match=key):
        validate_config(load_config(env))
