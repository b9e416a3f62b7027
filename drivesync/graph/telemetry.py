"""What every Graph HTTP exchange reports: a ``client-request-id``, failure logs, observers.

Microsoft support asks for the ``request-id`` Graph returns and the ``client-request-id`` we sent
(https://learn.microsoft.com/graph/best-practices-concept#reliability-and-support). Every request
of a ``GraphClient``'s sessions carries a fresh UUID in ``client-request-id``; every answer of 400
or more is logged with both ids (never the query string: pre-authenticated URLs carry
credentials there). Observers (the metrics module) hear each status and ``Retry-After``; this
module knows nothing of Flask or Prometheus.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from drivesync.graph.retry import parse_retry_after

logger = logging.getLogger(__name__)

CLIENT_REQUEST_ID = "client-request-id"
#: Observers called as ``observer(status, retry_after_seconds_or_None)`` after every answer.
Observer = Callable[[int, float | None], None]
observers: list[Observer] = []


class _ClientRequestIdAdapter(HTTPAdapter):
    """An HTTP adapter that stamps each outgoing request with a fresh ``client-request-id``."""

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        """Add a ``client-request-id`` unless the caller set one."""
        request.headers.setdefault(CLIENT_REQUEST_ID, str(uuid.uuid4()))


def _on_response(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
    retry_after = None
    if resp.status_code in (429, 503):
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if resp.status_code >= 400:
        parts = urlsplit(resp.url or "")
        # 404 and 409 are often expected (lookups before a create); throttling and 5xx are not.
        level = (
            logging.WARNING
            if resp.status_code in (429,) or resp.status_code >= 500
            else logging.INFO
        )
        logger.log(
            level,
            "Graph %s %s%s answered %d (request-id=%s, client-request-id=%s)",
            resp.request.method if resp.request else "?",
            parts.netloc,
            _short_path(parts.path),
            resp.status_code,
            resp.headers.get("request-id", "-"),
            (resp.request.headers.get(CLIENT_REQUEST_ID) if resp.request else None) or "-",
        )
    for observer in list(observers):
        try:
            observer(resp.status_code, retry_after)
        except Exception:  # an observer must never break a Graph call
            logger.exception("Graph response observer failed")


def _short_path(path: str) -> str:
    # Upload-session URLs carry their credential in the path (…/uploadSession?…); keep only the
    # first segments, which name the API, not the session or the file.
    segments = [s for s in path.split("/") if s]
    return "/" + "/".join(segments[:3]) + ("/…" if len(segments) > 3 else "")


def instrument(session: requests.Session) -> requests.Session:
    """Stamp ``session``'s requests with ``client-request-id`` and report its answers."""
    adapter = _ClientRequestIdAdapter()
    for prefix in ("https://", "http://"):
        # Leave a caller's own transport (a test stub, a tuned pool) in place.
        if type(session.adapters.get(prefix)) is HTTPAdapter:
            session.mount(prefix, adapter)
    if _on_response not in session.hooks["response"]:
        session.hooks["response"].append(_on_response)
    return session
