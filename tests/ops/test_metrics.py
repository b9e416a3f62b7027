"""Prometheus metrics: HTTP by endpoint, sync and Graph counters, the backlog, the token gate."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from drivesync import create_app, events
from drivesync.extensions import db
from drivesync.scope import user_scope
from tests.conftest import app_config
from tests.fixtures_emulator import ALEX, csrf_from
from tests.ops.conftest import dispose

TOKEN = "metrics-token-0123456789"


def value(name: str, **labels: str) -> float:
    """Return a sample's current value in this process (0 when it has never been set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_http_requests_are_counted_by_endpoint_and_status(client):
    """Requests count under the Flask endpoint name (never the path), 404s as 'unmatched'."""
    before_ok = value("drivesync_http_requests_total", endpoint="ops.healthz", method="GET",
                      status="200")  # fmt: skip
    before_404 = value("drivesync_http_requests_total", endpoint="unmatched", method="GET",
                       status="404")  # fmt: skip
    client.get("/healthz")
    client.get("/healthz")
    client.get("/no/such/user@example.com/file.pdf")
    assert value("drivesync_http_requests_total", endpoint="ops.healthz", method="GET",
                 status="200") == before_ok + 2  # fmt: skip
    assert value("drivesync_http_requests_total", endpoint="unmatched", method="GET",
                 status="404") == before_404 + 1  # fmt: skip
    assert value("drivesync_http_request_duration_seconds_count", endpoint="ops.healthz",
                 method="GET") >= 2  # fmt: skip
    text = client.get("/metrics").get_data(as_text=True)
    assert "user@example.com" not in text and "file.pdf" not in text


def test_metrics_need_the_bearer_token(client):
    """With a token configured, /metrics answers 401 without it or with a wrong one."""
    client.application.config["METRICS_TOKEN"] = TOKEN
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert "drivesync_http_requests_total" in r.get_data(as_text=True)


def test_metrics_are_hidden_in_production_without_a_token(tmp_path: Path, database_url: str):
    """In production /metrics does not exist until DRIVESYNC_METRICS_TOKEN is set."""
    app = create_app(app_config(tmp_path, database_url, ENV_NAME="production"))
    status = app.test_client().get("/metrics").status_code
    dispose(app)
    assert status == 404


def test_short_metrics_tokens_are_refused():
    """A metrics token shorter than 16 characters stops the app at start."""
    from drivesync.config import ConfigError, load_config, validate_config

    with pytest.raises(ConfigError, match="METRICS_TOKEN"):
        validate_config(load_config({"DRIVESYNC_METRICS_TOKEN": "short"}))


def test_sync_and_token_events_move_the_counters(app, make_user):
    """file_synced, file_failed and token_refreshed signals reach the counters, labels bounded."""
    synced, sent = value("drivesync_files_synced_total"), value("drivesync_bytes_uploaded_total")
    transient = value("drivesync_files_failed_total", reason="transient")
    other = value("drivesync_files_failed_total", reason="other")
    ok = value("drivesync_token_refreshes_total", outcome="ok")
    uid = make_user()
    # As the engine sends them: inside the app, in the user's scope (history writes a row for
    # each, in the sender's transaction, which row-level security checks).
    with app.app_context(), user_scope(uid):
        events.file_synced.send(None, user_id=uid, file_id=2, item_id="x", etag="e", size=1234)
        events.file_failed.send(None, user_id=uid, file_id=3, reason="timeout", kind="transient")
        events.file_failed.send(None, user_id=uid, file_id=4, reason="?", kind="something-new")
        events.token_refreshed.send(None, user_id=uid, outcome="ok")
        db.session.rollback()  # the history rows of these made-up files are not kept
    assert value("drivesync_files_synced_total") == synced + 1
    assert value("drivesync_bytes_uploaded_total") == sent + 1234
    assert value("drivesync_files_failed_total", reason="transient") == transient + 1
    assert value("drivesync_files_failed_total", reason="other") == other + 1
    assert value("drivesync_token_refreshes_total", outcome="ok") == ok + 1


def test_backlog_gauges_count_due_files_and_active_runs(client, make_user, make_file):
    """The scrape counts every user's files waiting to sync (SQLite: directly)."""
    a, b = make_user(), make_user()
    make_file(a, "a.txt")
    make_file(a, "b.txt")
    make_file(b, "c.txt")
    text = client.get("/metrics").get_data(as_text=True)
    assert "drivesync_files_due 3.0" in text
    assert "drivesync_sync_runs_active 0.0" in text


@pytest.mark.emulator
@pytest.mark.slow
def test_a_sync_run_moves_graph_file_byte_and_refresh_metrics(
    client, app, make_user, make_file, login, connect, emu, emulator_config
):
    """A real sync against the emulator counts Graph answers by status, a throttle with its
    Retry-After, a token refresh, and (from the engine's signals) files and bytes."""
    app.config.update(emulator_config)
    uid = make_user("metrics@example.com")
    login(uid)
    make_file(uid, "one.txt", b"a" * 1000)
    make_file(uid, "two.txt", b"b" * 2000)
    connect(ALEX)
    heard: list[int] = []

    def _heard(sender, **kw):
        heard.append(kw.get("size") or 0)

    events.file_synced.connect(_heard)
    before = {
        "ok": value("drivesync_graph_requests_total", status="200")
        + value("drivesync_graph_requests_total", status="201"),
        "429": value("drivesync_graph_requests_total", status="429"),
        "throttled": value("drivesync_graph_throttled_total"),
        "waited": value("drivesync_graph_retry_after_seconds_total"),
        "refresh": value("drivesync_token_refreshes_total", outcome="ok"),
        "files": value("drivesync_files_synced_total"),
        "bytes": value("drivesync_bytes_uploaded_total"),
    }
    emu.expire_access_tokens(0)  # the stored token is dead: the run refreshes it
    emu.expire_access_tokens(3600)
    emu.throttle(count=1, retry_after=1)
    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    client.post("/settings/onedrive/sync", data={"csrf_token": token})
    events.file_synced.disconnect(_heard)
    assert "2 of 2 synced" in client.get("/settings/onedrive/").get_data(as_text=True)
    ok = value("drivesync_graph_requests_total", status="200") + value(
        "drivesync_graph_requests_total", status="201"
    )
    assert ok >= before["ok"] + 2
    assert value("drivesync_graph_requests_total", status="429") == before["429"] + 1
    assert value("drivesync_graph_throttled_total") == before["throttled"] + 1
    assert value("drivesync_graph_retry_after_seconds_total") == before["waited"] + 1
    assert value("drivesync_token_refreshes_total", outcome="ok") == before["refresh"] + 1
    if not heard:
        pytest.skip("the sync engine does not send file_synced yet (engine branch)")
    assert value("drivesync_files_synced_total") == before["files"] + 2
    assert value("drivesync_bytes_uploaded_total") == before["bytes"] + 3000


@pytest.mark.emulator
@pytest.mark.slow
def test_graph_calls_send_a_client_request_id_the_emulator_receives(emulator, emu, caplog):
    """Each Graph request carries a fresh client-request-id, which the emulator echoes back
    (it echoes its own request-id when none is sent); a failure logs both ids."""
    import logging

    from drivesync.graph.client import GraphClient
    from drivesync.graph.errors import GraphError
    from tests.fixtures_emulator import CLIENT_ID

    token = emu.mint_token(ALEX, CLIENT_ID)["access_token"]
    client = GraphClient(lambda force: token, base_url=f"{emulator.url}/v1.0")
    seen: list[tuple[str, str, str]] = []
    client.session.hooks["response"].append(
        lambda r, *a, **k: seen.append(
            (
                r.request.headers.get("client-request-id", ""),
                r.headers.get("client-request-id", ""),
                r.headers.get("request-id", ""),
            )  # fmt: skip
        )
    )
    caplog.set_level(logging.INFO, logger="drivesync.graph.telemetry")
    try:
        client.me()
        client.drive()
        with pytest.raises(GraphError):
            client.get_item("no-such-item")
    finally:
        client.close()
    assert len(seen) == 3
    sent = [s for s, _, _ in seen]
    assert len(set(sent)) == 3 and all(len(s) == 36 for s in sent)
    for s, echoed, rid in seen:
        assert echoed == s != rid  # the emulator received our id, and has its own request-id
    failure = [r.getMessage() for r in caplog.records if "answered 404" in r.getMessage()]
    assert failure and seen[2][0] in failure[0] and seen[2][2] in failure[0]
    assert "no-such-item" not in failure[0]  # item ids and names stay out of the log


def test_upload_bodies_never_reach_metrics(client, make_user, login):
    """Uploading a file does not put its name into any metric label."""
    from tests.conftest import csrf_token

    uid = make_user()
    login(uid)
    token = csrf_token(client)
    client.post(
        "/library/upload",
        data={"csrf_token": token, "files": [(io.BytesIO(b"x"), "secret-diagnosis.pdf")]},
    )
    assert "secret-diagnosis" not in client.get("/metrics").get_data(as_text=True)
