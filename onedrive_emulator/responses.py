"""Response helpers: Graph's error body, identity-platform errors, JSON with Graph's headers.

Graph error shape: https://learn.microsoft.com/graph/errors ::

    {"error": {"code": "...", "message": "...",
               "innerError": {"date": "...", "request-id": "...", "client-request-id": "..."}}}

OneDrive's more specific codes (``fragmentOverlap``, ``invalidPath``...) are nested as
``innerError.code``, as the OneDrive error page describes:
https://learn.microsoft.com/onedrive/developer/rest-api/concepts/errors
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import Response, g, request

from .state import utcnow

GRAPH_JSON = (
    "application/json; odata.metadata=minimal; odata.streaming=true; "
    "IEEE754Compatible=false; charset=utf-8"
)


def request_ids() -> tuple[str, str]:
    """Return (request-id, client-request-id) for the current request, creating them once."""
    if "request_id" not in g:
        g.request_id = str(uuid.uuid4())
        g.client_request_id = request.headers.get("client-request-id") or g.request_id
    return g.request_id, g.client_request_id


def graph_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Return ``body`` as JSON with Graph's content type."""
    resp = Response(json.dumps(body), status=status, content_type=GRAPH_JSON)
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def graph_error(
    status: int,
    code: str,
    message: str,
    inner_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Return a Graph error response."""
    rid, crid = request_ids()
    inner: dict[str, Any] = {}
    if inner_code:
        inner["code"] = inner_code
    inner.update(
        {
            "date": utcnow().strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": rid,
            "client-request-id": crid,
        }
    )
    body = {"error": {"code": code, "message": message, "innerError": inner}}
    return graph_json(body, status, headers)


def identity_error(status: int, error: str, aadsts: int, description: str) -> Response:
    """Return an identity-platform token-endpoint error.

    Shape from https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow
    (Error response): error, error_description (starting with the AADSTS code and ending with
    the trace/correlation ids and timestamp), error_codes, timestamp, trace_id, correlation_id.
    """
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    stamp = utcnow().strftime("%Y-%m-%d %H:%M:%SZ")
    text = (
        f"AADSTS{aadsts}: {description}\r\nTrace ID: {trace_id}\r\n"
        f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}"
    )
    body = {
        "error": error,
        "error_description": text,
        "error_codes": [aadsts],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
    }
    resp = Response(json.dumps(body), status=status, content_type="application/json; charset=utf-8")
    resp.headers["Cache-Control"] = "no-store, no-cache"
    resp.headers["Pragma"] = "no-cache"
    return resp
