"""Operating drivesync: health checks, Prometheus metrics and logs, wired by ``init_app``."""

from __future__ import annotations

from typing import Any

from celery import signals
from flask import Blueprint, Flask, current_app, g, request

from ..extensions import csrf, limiter
from . import health, logs, metrics

bp = Blueprint("ops", __name__)
bp.add_url_rule("/healthz", "healthz", health.healthz)
bp.add_url_rule("/readyz", "readyz", health.readyz)
bp.add_url_rule("/metrics", "metrics", metrics.metrics_view)

REQUEST_ID_HEADER = "X-Request-ID"


def _bind_request_id() -> None:
    trusted = current_app.config.get("PROXY_COUNT", 0) > 0
    sent = logs.valid_request_id(request.headers.get(REQUEST_ID_HEADER)) if trusted else None
    rid = sent or logs.new_request_id()
    g._request_id = rid
    g._request_id_token = logs.bind(rid)


def _echo_request_id(response: Any) -> Any:
    rid = g.get("_request_id")
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid
    return response


def _unbind_request_id(exc: BaseException | None) -> None:
    token = g.pop("_request_id_token", None)
    if token is not None:
        logs.unbind(token)


def init_app(app: Flask) -> None:
    """Configure logging, request ids, metrics and the health/metrics endpoints for ``app``."""
    logs.configure(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])
    logs.install_celery_hooks()
    # Registered first, so every later hook's log records carry the id.
    app.before_request(_bind_request_id)
    app.after_request(_echo_request_id)
    app.teardown_request(_unbind_request_id)
    metrics.init_app(app)
    if addr := app.config.get("WORKER_METRICS_ADDR"):

        def _serve(**_: Any) -> None:
            metrics.start_worker_server(addr)

        signals.worker_init.connect(_serve, weak=False, dispatch_uid="drivesync-worker-metrics")
    csrf.exempt(bp)
    limiter.exempt(bp)
    app.register_blueprint(bp)
