"""A real Prometheus server (Debian's package) scrapes gunicorn's /metrics with the bearer token."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.ops.conftest import METRICS_TOKEN, Gunicorn, free_port, wait_for_port

pytestmark = [pytest.mark.slow]

QUERY = 'sum(drivesync_http_requests_total{endpoint="ops.healthz",status="200"})'


def _query(base: str) -> float | None:
    r = requests.get(f"{base}/api/v1/query", params={"query": QUERY}, timeout=5)
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _wait_for(base: str, predicate, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = _query(base)
        if value is not None and predicate(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never saw the expected value (last: {value})")


def test_prometheus_scrapes_the_counters_moving(tmp_path: Path):
    """Prometheus scrapes /metrics over loopback with the bearer token and sees requests count."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Debian's prometheus package is not installed (bin/test installs it)")
    server = Gunicorn(tmp_path, "--workers", "2")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: drivesync\n"
        f"    authorization: {{type: Bearer, credentials: {METRICS_TOKEN}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    )
    prom = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=30)
        for _ in range(3):
            requests.get(server.url + "/healthz", timeout=5)
        first = _wait_for(base, lambda v: v >= 3)
        for _ in range(10):
            requests.get(server.url + "/healthz", timeout=5)
        _wait_for(base, lambda v: v >= first + 10)
        targets = requests.get(f"{base}/api/v1/targets", timeout=5).json()["data"]
        assert [t["health"] for t in targets["activeTargets"]] == ["up"]
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        server.stop()
