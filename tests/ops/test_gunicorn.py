"""gunicorn with the repository's config: metrics summed across workers, slow uploads do not
stall the app, JSON access log with request ids."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.ops.conftest import Gunicorn, sample

pytestmark = [pytest.mark.slow]


def _healthz_per_worker(metrics_dir: Path, tmp: Path) -> list[float]:
    """Return each worker's own /healthz count, read from its counter file alone."""
    import shutil

    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    counts = []
    for i, db_file in enumerate(sorted(metrics_dir.glob("counter_*.db"))):
        alone = tmp / f"worker-{i}-{time.monotonic_ns()}"
        alone.mkdir()
        shutil.copy(db_file, alone / db_file.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(alone))
        counts.append(sample(generate_latest(registry).decode(), "drivesync_http_requests_total",
                             endpoint="ops.healthz", method="GET", status="200"))  # fmt: skip
    return counts


def test_metrics_aggregate_across_gunicorn_workers(tmp_path: Path):
    """Requests served by two workers (each counted in its own file) are summed in one scrape."""
    # One connection per worker at a time: concurrent clients must spread over both workers.
    server = Gunicorn(tmp_path, "--workers", "2", "--threads", "1", "--worker-connections", "1")
    try:
        before = sample(server.scrape(), "drivesync_http_requests_total",
                        endpoint="ops.healthz", method="GET", status="200")  # fmt: skip

        def hit(_: int) -> int:
            with requests.Session() as s:  # a new connection each time: spread over workers
                return s.get(server.url + "/healthz", timeout=10).status_code

        sent = 0
        per_worker: list[float] = []
        deadline = time.monotonic() + 60
        # Until both workers have served some (the second may still be booting on a busy box).
        while sum(1 for n in per_worker if n > 0) < 2 and time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(hit, range(40)))
            assert statuses == [200] * 40
            sent += 40
            per_worker = _healthz_per_worker(server.metrics_dir, tmp_path)
        assert sum(1 for n in per_worker if n > 0) >= 2, per_worker
        text = server.scrape()
        after = sample(text, "drivesync_http_requests_total",
                       endpoint="ops.healthz", method="GET", status="200")  # fmt: skip
        assert after - before == sent
    finally:
        server.stop()


def _signed_in(server: Gunicorn, tmp: Path) -> tuple[str, str]:
    """Create a user, sign in through the form; return the Cookie header and a CSRF token."""
    import re

    from drivesync import create_app
    from drivesync.services import accounts
    from tests.conftest import PASSWORD, app_config
    from tests.ops.conftest import dispose

    app = create_app(app_config(tmp, server.env["DRIVESYNC_DATABASE_URL"]))
    with app.app_context():
        accounts.create_user("slow@example.com", PASSWORD)
    dispose(app)
    csrf = re.compile(r'name="csrf_token" value="([^"]+)"')
    with requests.Session() as s:
        token = csrf.search(s.get(server.url + "/login", timeout=10).text).group(1)
        r = s.post(server.url + "/login", data={"csrf_token": token, "email": "slow@example.com",
                   "password": PASSWORD}, allow_redirects=False, timeout=30)  # fmt: skip
        assert r.status_code in (302, 303), r.status_code
        token = csrf.search(s.get(server.url + "/library/", timeout=10).text).group(1)
        return "; ".join(f"{k}={v}" for k, v in s.cookies.items()), token


def _slow_upload(url: str, cookie: str, token: str) -> socket.socket:
    """Start a signed-in 10 MB multipart upload, send a sliver of it, and leave it hanging."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    boundary = "slowboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    sock.sendall(
        (
            "POST /library/upload HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            f"Cookie: {cookie}\r\n"
            f"X-CSRFToken: {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
        ).encode()
        + head
        + b"x" * 1024
    )
    return sock


def _page_answers_while_uploads_hang(server: Gunicorn, tmp: Path, uploads: int) -> bool:
    cookie, token = _signed_in(server, tmp)
    socks = [_slow_upload(server.url, cookie, token) for _ in range(uploads)]
    try:
        time.sleep(1.0)  # let every upload reach a worker or thread
        try:
            r = requests.get(server.url + "/login", timeout=4)
            return r.status_code == 200
        except requests.RequestException:
            return False
    finally:
        for s in socks:
            s.close()


def test_slow_uploads_do_not_stall_the_app(tmp_path: Path):
    """With the repository's config (gthread), five hanging signed-in uploads on ONE worker leave
    the sign-in page answering; the same load on one sync worker does not (the control)."""
    threaded = Gunicorn(tmp_path / "gthread", "--workers", "1")
    try:
        assert _page_answers_while_uploads_hang(threaded, tmp_path / "gthread", 5)
    finally:
        threaded.stop()
    sync = Gunicorn(tmp_path / "sync", "--workers", "1", "--worker-class", "sync", "--threads", "1")
    try:
        assert not _page_answers_while_uploads_hang(sync, tmp_path / "sync", 5)
    finally:
        sync.stop()


def test_access_log_is_json_with_the_request_id_and_no_query(tmp_path: Path):
    """gunicorn's access log is one JSON object per request, with the request id and the path
    but without the query string or long tokens in the path."""
    server = Gunicorn(tmp_path, "--workers", "1")
    try:
        r = requests.get(server.url + "/healthz?code=SECRET-CODE", timeout=10)
        rid = r.headers["X-Request-ID"]
        requests.get(server.url + "/password/reset/" + "t" * 60, timeout=10)
        time.sleep(0.5)
    finally:
        server.stop()
    lines = (tmp_path / "gunicorn.out").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    mine = [rec for rec in records if rec.get("request_id") == rid]
    assert mine and mine[0]["path"] == "/healthz" and mine[0]["status"] == 200
    assert {"time", "level", "method", "duration_ms", "remote_addr"} <= mine[0].keys()
    text = "\n".join(lines)
    assert "SECRET-CODE" not in text and "t" * 60 not in text
    errors = (tmp_path / "gunicorn.err").read_text().splitlines()
    assert errors and all(json.loads(line) for line in errors if line.strip())
