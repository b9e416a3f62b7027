"""The emulator's WSGI app: identity platform, Graph, upload/download URLs and the admin API."""

from __future__ import annotations

import os

from flask import Flask, Response, current_app, g, request

from .faults import Injected
from .responses import graph_error, request_ids
from .state import EmulatorState

_GRAPH_PREFIXES = ("/v1.0/", "/_upload/", "/_download/")
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


def create_emulator_app(state: EmulatorState | None = None) -> Flask:
    """Create the emulator app around ``state`` (a fresh one when omitted).

    Refuses to run when ``DRIVESYNC_ENV=production``: the emulator is for development and tests.
    """
    if os.environ.get("DRIVESYNC_ENV", "").strip().lower() == "production":
        raise ProductionRefused("The OneDrive emulator is never enabled in production.")
    from . import admin, graph, identity, uploads

    app = Flask("onedrive_emulator")
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = None
    app.extensions["drivesync_emulator"] = state or EmulatorState()
    for module in (identity, graph, uploads, admin):
        app.register_blueprint(module.bp)
    app.before_request(_inject_fault)
    app.after_request(_finish)
    return app


def _fault_response(fault: Injected) -> Response:
    code, message, inner = _FAULT_BODIES[fault.status]
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
    return graph_error(fault.status, code, message, inner, headers)


def _inject_fault() -> Response | None:
    if not request.path.startswith(_GRAPH_PREFIXES):
        return None
    state: EmulatorState = _state()
    with state.lock:
        fault = state.faults.next_fault()
    return _fault_response(fault) if fault else None


def _state() -> EmulatorState:
    return current_app.extensions["drivesync_emulator"]


def _finish(response: Response) -> Response:
    path = request.path
    if path.startswith(_GRAPH_PREFIXES):
        rid, crid = request_ids()
        response.headers.setdefault("request-id", rid)
        response.headers.setdefault("client-request-id", crid)
    if not path.startswith("/_emulator/"):
        _state().log_request(
            {
                "method": request.method,
                "path": path,
                "query": request.query_string.decode("latin-1"),
                "status": 0 if g.get("dropped") else response.status_code,
                "had_authorization_header": "Authorization" in request.headers,
                "dropped": bool(g.get("dropped")),
            }
        )
    return response
