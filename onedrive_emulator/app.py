"""The emulator's WSGI app: identity platform, Graph, upload/download URLs and the admin API."""

from __future__ import annotations

import os
import time

from flask import Flask, Response, current_app, g, request

from .bodies import drop_connection, read_and_discard, reset_connection
from .faults import Injected
from .responses import graph_error, request_ids
from .state import EmulatorState

_GRAPH_PREFIXES = ("/v1.0/", "/_upload/", "/_download/")
# A connection cut mid-body reads this much of the body first (at most half of it): little
# enough that a client sending a 320 KiB-multiple fragment is still writing when the cut lands.
CUT_AFTER = 64 * 1024
_FAULT_BODIES = {
    429: ("activityLimitReached", "The request has been throttled.", "throttledRequest"),
    500: ("generalException", "An unspecified error has occurred.", None),
    502: ("generalException", "Bad gateway.", None),
    503: (
        "serviceNotAvailable",
        "The service is not available. Try the request again after a delay.",
        None,
    ),
    504: ("generalException", "Gateway timeout.", None),
}


class ProductionRefused(RuntimeError):
    """Raised when someone tries to run the emulator with DRIVESYNC_ENV=production."""


def create_emulator_app(
    state: EmulatorState | None = None, *, notify_ca: str | None = None
) -> Flask:
    """Create the emulator app around ``state`` (a fresh one when omitted).

    ``notify_ca`` names a CA file to trust for change-notification URLs (tests); without it
    notifications verify TLS against the system's roots.

    Refuses to run when ``DRIVESYNC_ENV=production``: the emulator is for development and tests.
    """
    if os.environ.get("DRIVESYNC_ENV", "").strip().lower() == "production":
        raise ProductionRefused("The OneDrive emulator is never enabled in production.")
    from . import admin, graph, identity, subscriptions, uploads

    app = Flask("onedrive_emulator")
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = None
    app.extensions["drivesync_emulator"] = state = state or EmulatorState()
    for module in (identity, graph, uploads, admin):
        app.register_blueprint(module.bp)
    app.register_blueprint(subscriptions.admin_bp)
    if notify_ca is not None:
        subscriptions.configure(state, notify_ca=notify_ca)
    app.before_request(_inject_fault)
    app.after_request(_finish)
    return app


def _fault_response(fault: Injected) -> Response:
    code, message, inner = _FAULT_BODIES[fault.status]
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
    return graph_error(fault.status, code, message, inner, headers)


def _target() -> str | None:
    """Return the connection-fault target this request belongs to (see faults.py), if any."""
    path = request.path
    if path.startswith("/_upload/"):
        return "fragment" if request.method == "PUT" else None
    return "graph" if path.startswith("/v1.0/") else None


def _inject_fault() -> Response | None:
    path = request.path
    if path.startswith("/_emulator/"):
        return None
    state: EmulatorState = _state()
    if state.latency > 0:
        time.sleep(state.latency)  # outside the lock: concurrent requests wait side by side
    if not path.startswith(_GRAPH_PREFIXES):
        return None
    target = _target()
    with state.lock:
        fault = state.faults.next_fault()
        cut = None
        if fault is None:
            cut = next((k for k in ("drop", "reset") if state.faults.take(k, target)), None)
    if fault:
        return _fault_response(fault)
    if cut is None:
        return None
    # Mid-body: read a little of what the client is sending, then cut while it still sends.
    part = min(CUT_AFTER, (request.content_length or 0) // 2)
    if part:
        read_and_discard(part)
    return drop_connection() if cut == "drop" else reset_connection()


def _state() -> EmulatorState:
    return current_app.extensions["drivesync_emulator"]


def _finish(response: Response) -> Response:
    path = request.path
    if path.startswith(_GRAPH_PREFIXES):
        rid, crid = request_ids()
        response.headers.setdefault("request-id", rid)
        response.headers.setdefault("client-request-id", crid)
        if response.status_code < 300 and not g.get("dropped"):
            with _state().lock:
                lose = _state().faults.take("lose", _target())
            if lose:
                response = drop_connection()  # the work is done; only the answer is lost
                g.cut = "lose"
    if not path.startswith("/_emulator/"):
        _state().log_request(
            {
                "method": request.method,
                "path": path,
                "query": request.query_string.decode("latin-1"),
                "status": 0 if g.get("dropped") else response.status_code,
                "had_authorization_header": "Authorization" in request.headers,
                "dropped": bool(g.get("dropped")),
                "cut": g.get("cut"),
                "content_length": request.content_length,
                "content_range": request.headers.get("Content-Range"),
                "next_expected": g.get("next_expected"),
            }
        )
    return response
