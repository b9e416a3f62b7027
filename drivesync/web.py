"""App-wide web wiring: request class, security headers, error pages, template filters."""

from __future__ import annotations

import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Request,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from .scope import reset_scope, set_scope
from .services import quota
from .services.errors import ServiceError
from .services.storage import IncomingFile, LocalStorage

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# No inline script anywhere: htmx is configured through a <meta> tag and reads hx-* attributes.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self' {auth}; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


class StreamingRequest(Request):
    """A request whose uploaded files stream straight into storage while being hashed."""

    def _get_file_stream(  # type: ignore[override]
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IncomingFile:
        meter = _quota_meter(total_content_length)
        incoming = storage().new_incoming(meter.take if meter else None)
        g.setdefault("incoming_files", []).append(incoming)
        return incoming


def _quota_meter(content_length: int | None) -> quota.Meter | None:
    """Return the request's quota meter (one for all its parts), refusing a body that cannot fit
    before any byte of it is stored. Parts left behind are discarded in ``_discard_incoming``."""
    if "quota_meter" not in g:
        raw = session.get("_user_id")
        meter = None
        if raw and str(raw).isdigit():
            replacing = None
            if request.endpoint == "library.replace":
                replacing = (request.view_args or {}).get("file_id")
            meter = quota.check_incoming(int(raw), content_length, replacing)
        g.quota_meter = meter
    return g.quota_meter


def storage() -> LocalStorage:
    """Return the storage backend of the current app."""
    return LocalStorage(current_app.config["STORAGE_DIR"])


def _ensure_secret_key(app: Flask) -> None:
    """Give development a persistent random secret key in the instance folder."""
    if app.config.get("SECRET_KEY"):
        return
    path = Path(app.config["INSTANCE_DIR"]) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        logger.warning("generated a development secret key in %s", path)
    app.config["SECRET_KEY"] = path.read_text().strip()


def _security_headers(response: Any) -> Any:
    cfg = current_app.config
    authority = cfg.get("MS_AUTHORITY", "")
    response.headers.setdefault("Content-Security-Policy", CSP.format(auth=authority).strip())
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if cfg.get("ENV_NAME") == "production":
        response.headers.setdefault("Strict-Transport-Security", "max-age=63072000")
    return response


def _scope_request() -> None:
    """Scope the request's database work to the signed-in user (the session cookie is signed)."""
    raw = session.get("_user_id")
    g._scope_token = set_scope(int(raw) if raw and str(raw).isdigit() else None)


def _unscope_request(exc: BaseException | None) -> None:
    token = g.pop("_scope_token", None)
    if token is not None:
        reset_scope(token)


def _discard_incoming(exc: BaseException | None) -> None:
    """Delete upload parts that no service kept (failed form, CSRF error, dropped client)."""
    for incoming in g.pop("incoming_files", []):
        if incoming.path.exists():
            incoming.close()
            incoming.path.unlink(missing_ok=True)


def _error_page(status: int, title: str, message: str) -> Any:
    if request.headers.get("HX-Request") == "true":
        return render_template("_error_fragment.html", title=title, message=message), status
    return render_template("error.html", status=status, title=title, message=message), status


def humansize(n: int | None) -> str:
    """Return a byte count in human units (1.5 MB)."""
    if n is None:
        return "—"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def reltime(when: datetime | None) -> str:
    """Return a time as '3 minutes ago'."""
    if when is None:
        return "never"
    seconds = int((datetime.now(UTC) - when).total_seconds())
    if seconds < 45:
        return "just now"
    for span, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= span:
            n = round(seconds / span)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def isotime(when: datetime | None) -> str:
    """Return a time as an exact UTC string for a tooltip."""
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


def configure(app: Flask) -> None:
    """Wire the request class, headers, error pages and filters into ``app``."""
    _ensure_secret_key(app)
    app.request_class = StreamingRequest
    app.after_request(_security_headers)
    app.before_request(_scope_request)
    app.teardown_request(_discard_incoming)
    app.teardown_request(_unscope_request)
    app.jinja_env.filters["humansize"] = humansize
    app.jinja_env.filters["reltime"] = reltime
    app.jinja_env.filters["isotime"] = isotime
    app.context_processor(lambda: {"has_onedrive": "onedrive.settings" in app.view_functions})
    # Browsers ask for /favicon.ico whatever the page says; point them at the SVG.
    app.add_url_rule(
        "/favicon.ico",
        endpoint="favicon",
        view_func=lambda: redirect(url_for("static", filename="img/favicon.svg"), code=301),
    )

    @app.errorhandler(CSRFError)
    def csrf_error(e: CSRFError) -> Any:
        return _error_page(
            400,
            "Your form expired",
            "Reload the page and try again (the security token was missing or out of date).",
        )

    @app.errorhandler(ServiceError)
    def service_error(e: ServiceError) -> Any:
        return _error_page(e.status, "That did not work", e.message)

    @app.errorhandler(413)
    def too_large(e: HTTPException) -> Any:
        limit = app.config["MAX_UPLOAD_MB"]
        return _error_page(
            413, "File too large", f"Uploads are limited to {limit} MB in total per request."
        )

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Any:
        if e.code and e.code < 400:
            return e
        return _error_page(e.code or 500, e.name, e.description or "")
