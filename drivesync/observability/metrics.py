"""Prometheus metrics: HTTP, sync, Graph and token counters, and the sync backlog.

Under gunicorn the metrics live in ``PROMETHEUS_MULTIPROC_DIR`` (one file set per worker,
summed at scrape time by ``MultiProcessCollector``; ``gunicorn.conf.py`` removes a dead worker's
live files in ``child_exit``). Without that variable they live in the process (development,
tests). Celery workers write to their own directory and answer scrapes on
``DRIVESYNC_WORKER_METRICS_ADDR`` (``start_worker_server``).

Labels are bounded: Flask endpoint names (never paths), HTTP methods and statuses, failure kinds,
refresh outcomes. No user id, e-mail or file name ever becomes a label. Sync and account events
arrive through ``drivesync.events`` signals; Graph answers through ``graph.telemetry``.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, abort, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import events
from ..graph import telemetry
from .backlog import sync_backlog

logger = logging.getLogger(__name__)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_FAILURE_KINDS = frozenset({"transient", "permanent", "user"})
_REFRESH_OUTCOMES = frozenset({"ok", "rejected", "error"})

HTTP_REQUESTS = Counter(
    "drivesync_http_requests_total",
    "HTTP requests answered, by Flask endpoint, method and status.",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "drivesync_http_request_duration_seconds",
    "Time to answer an HTTP request, by Flask endpoint and method.",
    ["endpoint", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
FILES_SYNCED = Counter("drivesync_files_synced_total", "Files synced to OneDrive.")
FILES_FAILED = Counter(
    "drivesync_files_failed_total",
    "Files whose sync failed, by reason class (transient, permanent, user, other).",
    ["reason"],
)
BYTES_UPLOADED = Counter("drivesync_bytes_uploaded_total", "Bytes of files synced to OneDrive.")
GRAPH_REQUESTS = Counter(
    "drivesync_graph_requests_total", "Microsoft Graph HTTP answers, by status.", ["status"]
)
GRAPH_THROTTLED = Counter("drivesync_graph_throttled_total", "Graph answers of 429 (throttled).")
GRAPH_RETRY_AFTER = Counter(
    "drivesync_graph_retry_after_seconds_total",
    "Seconds Graph asked us to wait in Retry-After on 429/503 (the pacer waits at least this).",
)
TOKEN_REFRESHES = Counter(
    "drivesync_token_refreshes_total",
    "OneDrive access-token refreshes, by outcome (ok, rejected, error).",
    ["outcome"],
)


# -- event receivers -----------------------------------------------------------------------------


def _on_file_synced(sender: Any, **kw: Any) -> None:
    FILES_SYNCED.inc()
    size = kw.get("size")
    if isinstance(size, int) and size > 0:
        BYTES_UPLOADED.inc(size)


def _on_file_failed(sender: Any, **kw: Any) -> None:
    kind = kw.get("kind")
    FILES_FAILED.labels(reason=kind if kind in _FAILURE_KINDS else "other").inc()


def _on_token_refreshed(sender: Any, **kw: Any) -> None:
    outcome = kw.get("outcome")
    TOKEN_REFRESHES.labels(outcome=outcome if outcome in _REFRESH_OUTCOMES else "error").inc()


def _on_graph_response(status: int, retry_after: float | None) -> None:
    GRAPH_REQUESTS.labels(status=str(status) if 100 <= status <= 599 else "other").inc()
    if status == 429:
        GRAPH_THROTTLED.inc()
    if retry_after:
        GRAPH_RETRY_AFTER.inc(retry_after)


def subscribe() -> None:
    """Hear the domain events and Graph answers (idempotent)."""
    events.file_synced.connect(_on_file_synced, weak=False)
    events.file_failed.connect(_on_file_failed, weak=False)
    events.token_refreshed.connect(_on_token_refreshed, weak=False)
    if _on_graph_response not in telemetry.observers:
        telemetry.observers.append(_on_graph_response)


# -- HTTP ----------------------------------------------------------------------------------------


def _start_timer() -> None:
    g._metrics_start = time.perf_counter()


def _observe(response: Response) -> Response:
    start = g.pop("_metrics_start", None)
    if start is None:
        return response
    rule = request.url_rule
    endpoint = rule.endpoint if rule is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    HTTP_REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
    HTTP_LATENCY.labels(endpoint, method).observe(time.perf_counter() - start)
    return response


# -- exposition ----------------------------------------------------------------------------------


class BacklogCollector(Collector):
    """Active sync runs and files waiting to sync, counted at scrape time in one query."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the two gauges (nothing if the database does not answer)."""
        try:
            with self.app.app_context():
                active, due = sync_backlog()
        except Exception:
            logger.warning("metrics: the sync backlog query failed", exc_info=True)
            return
        yield GaugeMetricFamily(
            "drivesync_sync_runs_active", "Sync runs queued or running.", active
        )
        yield GaugeMetricFamily(
            "drivesync_files_due", "Files waiting to sync (not synced yet, or failed).", due
        )


def exposition(app: Flask | None = None) -> bytes:
    """Return the metrics text of every process sharing the multiprocess directory (or this)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if app is not None:
        backlog = CollectorRegistry()
        backlog.register(BacklogCollector(app))
        text += generate_latest(backlog)
    return text


def metrics_view() -> Response:
    """Answer a Prometheus scrape (bearer token; 404 in production without one)."""
    cfg = current_app.config
    token = cfg.get("METRICS_TOKEN") or ""
    if not token:
        if cfg.get("ENV_NAME") == "production":
            abort(404)
    else:
        sent = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            return Response(
                "metrics need a bearer token\n",
                401,
                {"WWW-Authenticate": 'Bearer realm="metrics"', "Content-Type": "text/plain"},
            )
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    resp = Response(exposition(app), mimetype=CONTENT_TYPE_LATEST)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init_app(app: Flask) -> None:
    """Time every request, hear events and Graph answers, and serve ``/metrics``."""
    subscribe()
    app.before_request(_start_timer)
    app.after_request(_observe)


# -- Celery workers ------------------------------------------------------------------------------


_worker_server_started = False


def start_worker_server(addr: str) -> None:
    """Serve this worker's metrics on ``host:port`` (started once, in the worker's main process)."""
    global _worker_server_started
    if _worker_server_started or not addr:
        return
    host, _, port = addr.rpartition(":")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    else:
        start_http_server(int(port), addr=host or "127.0.0.1")
    _worker_server_started = True
    logger.info("worker metrics on http://%s/metrics", addr)
