"""Microsoft Graph change notifications: ``POST /hooks/onedrive`` and its lifecycle twin.

The endpoint is public (Graph signs nothing), so it trusts nothing it is sent:

- the validation handshake (``?validationToken=…``) is echoed at once as ``text/plain`` with
  200, as https://learn.microsoft.com/graph/change-notifications-delivery-webhooks asks
  ("within 10 seconds"); nothing else happens for it;
- otherwise only ``application/json`` of at most :data:`MAX_BODY` bytes with a declared
  length is read; CSRF does not apply (Graph has no session) but a rate limit per client
  address does;
- every notification is checked by ``services.subscriptions.receive`` (owner lookup, then its
  ``clientState`` in constant time inside the owner's scope); the answer is the same 202 and
  empty body whether a notification was valid, forged or unknown;
- Graph wants a 2xx "within 3 seconds" or it retries and eventually throttles the endpoint:
  nothing here calls Graph or runs a delta check; a valid notification only makes the check due
  and wakes the scheduler. If the database cannot record it, a 503 asks Graph to retry.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from flask import Blueprint, Response, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db, limiter
from ..services import subscriptions

logger = logging.getLogger(__name__)

bp = Blueprint("notifications", __name__)

MAX_BODY = 256 * 1024  # a batch of change notifications without resource data is a few KiB
MAX_VALIDATION_TOKEN = 4096
# "Microsoft Graph never sends any value containing HTML or JavaScript code" and advises escaping
# it: a token with markup characters or controls is refused rather than reflected.
_PLAIN_TOKEN = re.compile(r"[^<>&\"'`\x00-\x1f\x7f]+")


def _limit() -> str:
    return str(current_app.config["WEBHOOK_RATE_LIMIT"])


def _plain(text: str, status: int) -> Response:
    resp = Response(text, status=status, mimetype="text/plain")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _accepted() -> Response:
    return _plain("", 202)


@bp.post(subscriptions.NOTIFY_PATH)
@bp.post(subscriptions.LIFECYCLE_PATH)
@limiter.limit(_limit)
def receive() -> Response:
    """Answer Graph's validation request, or take a batch of notifications."""
    token = request.args.get("validationToken")
    if token is not None:
        if not token or len(token) > MAX_VALIDATION_TOKEN or not _PLAIN_TOKEN.fullmatch(token):
            return _plain("", 400)
        # The query string arrives decoded; Graph wants the token back as plain text.
        return _plain(token, 200)
    if request.mimetype != "application/json":
        return _plain("", 415)
    length = request.content_length
    if length is None or length > MAX_BODY:
        return _plain("", 413)
    try:
        body: Any = json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError):
        return _plain("", 400)
    items = body.get("value") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return _plain("", 400)
    try:
        subscriptions.receive(items)
    except SQLAlchemyError:
        db.session.rollback()
        logger.exception("notifications: could not record a batch; Graph will retry")
        return _plain("", 503)
    return _accepted()
