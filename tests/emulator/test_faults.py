"""Fault knobs beyond the basics: targets, resets, 503 without Retry-After, latency, the log."""

from __future__ import annotations

import os
import time

import pytest
import requests

from onedrive_emulator.server import EmulatorServer

from .conftest import ALEX, Env
from .test_graph import put, qxh
from .test_uploads import UNIT, create, send

pytestmark = pytest.mark.emulator


def stored(env: Env) -> dict[str, dict]:
    """Return Alex's files by path."""
    return {i["path"]: i for i in env.admin.list_items(ALEX) if not i["folder"]}


def test_503_burst_without_retry_after(env: Env, http: requests.Session) -> None:
    """``retry_after=None`` makes a 503 burst carry no Retry-After header."""
    env.admin.fail(503, 2, retry_after=None)
    answers = [http.get(f"{env.graph}/me", timeout=5) for _ in range(3)]
    assert [r.status_code for r in answers] == [503, 503, 200]
    assert not any("Retry-After" in r.headers for r in answers)


def test_dropped_simple_upload_stores_nothing(env: Env, http: requests.Session) -> None:
    """A ``graph`` drop cuts a PUT …/content mid-body: the client errs and nothing is stored."""
    data = os.urandom(3 * 1024 * 1024)
    env.admin.drop_connection(1, target="graph")
    with pytest.raises(requests.ConnectionError):
        put(http, env, "cut.bin", data)
    assert "/cut.bin" not in stored(env)
    assert put(http, env, "cut.bin", data).status_code == 201
    cut = [e for e in env.admin.requests_log() if e["cut"]]
    assert [(e["method"], e["cut"], e["content_length"]) for e in cut] == [
        ("PUT", "drop", len(data))
    ]


def test_lost_simple_upload_is_stored(env: Env, http: requests.Session) -> None:
    """A ``graph`` lose stores the file, then closes the connection instead of answering."""
    data = os.urandom(100_000)
    env.admin.lose_response(1, target="graph")
    with pytest.raises(requests.ConnectionError):
        put(http, env, "lost.bin", data)
    assert stored(env)["/lost.bin"]["quickXorHash"] == qxh(data)


def test_reset_mid_fragment_keeps_nothing(env: Env, http: requests.Session) -> None:
    """A reset fragment is not stored; the session still expects byte 0 and the upload goes on."""
    data = os.urandom(UNIT * 20)
    url = create(http, env, "reset.bin")
    env.admin.reset_connection(1)
    with pytest.raises(requests.ConnectionError):
        send(url, data[: UNIT * 16], 0, len(data))
    assert requests.get(url, timeout=5).json()["nextExpectedRanges"] == ["0-"]
    assert send(url, data[: UNIT * 16], 0, len(data)).status_code == 202
    assert send(url, data[UNIT * 16 :], UNIT * 16, len(data)).status_code == 201
    puts = [e for e in env.admin.requests_log() if e["method"] == "PUT"]
    assert [(e["status"], e["cut"], e["next_expected"]) for e in puts] == [
        (0, "reset", None),
        (202, None, UNIT * 16),
        (201, None, UNIT * 20),
    ]
    assert puts[0]["content_range"] == f"bytes 0-{UNIT * 16 - 1}/{UNIT * 20}"


def test_connection_faults_reject_unknown_targets(env: Env) -> None:
    """Only ``fragment`` and ``graph`` are targets."""
    resp = requests.post(
        f"{env.url}/_emulator/faults/reset-connection", json={"target": "identity"}, timeout=5
    )
    assert resp.status_code == 400 and "identity" in resp.json()["error"]


def test_latency_knob(env: Env, http: requests.Session) -> None:
    """Added latency delays Graph requests, survives clear_faults and is undone by reset."""
    env.admin.set_latency(80)
    started = time.monotonic()
    assert http.get(f"{env.graph}/me", timeout=5).ok
    assert time.monotonic() - started >= 0.08
    env.admin.clear_faults()
    assert env.admin.latency() == 80
    env.admin.reset()
    assert env.admin.latency() == 0
    bad = requests.put(f"{env.url}/_emulator/latency", json={"ms": -5}, timeout=5)
    assert bad.status_code == 400


def test_latency_set_at_start_survives_reset() -> None:
    """``EmulatorServer(latency=…)`` (the ``--latency-ms`` flag) is what a reset goes back to."""
    with EmulatorServer(latency=0.03) as server:
        server.state.set_latency(0.2)
        server.state.reset()
        assert server.state.latency == pytest.approx(0.03)
