"""Error answers for the whole app: a full page for a browser, the message for htmx.

Every error an htmx action can meet (a refused service call, a CSRF failure, a rate limit, a 404,
a 500) goes through ``error_response``: normal requests get ``error.html`` with the HTTP status,
htmx requests get the message in the flash area with a 200 (see ``views/htmx.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, g, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError

from ..formats import humansize
from ..services.errors import ServiceError
from .htmx import is_htmx, message_response

logger = logging.getLogger(__name__)

bp = Blueprint("errors", __name__)

CSRF_TITLE = "Your form expired"
CSRF_MESSAGE = "Reload the page and try again (the security token was missing or out of date)."
SERVER_TITLE = "Something went wrong"
SERVER_MESSAGE = "drivesync could not finish this request. Nothing you did caused it; try again."


def request_id() -> str | None:
    """Return the current request's id when the app assigned one (for support), else None."""
    rid = g.get("request_id")
    return str(rid) if rid else None


def error_response(status: int, title: str, message: str, extra_html: str = "") -> Any:
    """Answer an error: ``error.html`` with ``status``, or for htmx the message with a 200."""
    if is_htmx():
        logger.info("htmx %s %s answered %s: %s", request.method, request.path, status, title)
        return message_response(f"{title}. {message}", "error", extra_html)
    return render_template("error.html", status=status, title=title, message=message), status


@bp.app_errorhandler(CSRFError)
def csrf_error(e: CSRFError) -> Any:
    """Tell the user the form's security token was missing or stale."""
    return error_response(400, CSRF_TITLE, CSRF_MESSAGE)


@bp.app_errorhandler(ServiceError)
def service_error(e: ServiceError) -> Any:
    """Show the message of a request a service refused."""
    return error_response(e.status, "That did not work", e.message)


@bp.app_errorhandler(413)
def too_large(e: HTTPException) -> Any:
    """Say how large an upload may be."""
    limit = humansize(current_app.config["MAX_CONTENT_LENGTH"])  # what werkzeug enforced
    return error_response(413, "File too large", f"Uploads are limited to {limit} per request.")


@bp.app_errorhandler(InternalServerError)
def server_error(e: InternalServerError) -> Any:
    """Show a generic message (never the exception) with the request id, if there is one."""
    rid = request_id()  # Flask has already logged the exception with its traceback
    message = SERVER_MESSAGE + (f" Reference: {rid}." if rid else "")
    return error_response(500, SERVER_TITLE, message)


@bp.app_errorhandler(HTTPException)
def http_error(e: HTTPException) -> Any:
    """Show any other HTTP error (404, 405, 429…) with its name and description."""
    if e.code and e.code < 400:
        return e
    return error_response(e.code or 500, e.name, e.description or "")
