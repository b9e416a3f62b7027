"""App-wide web wiring: request class, security headers, template filters.

Error pages and the htmx error convention live in ``views/errors.py`` and ``views/htmx.py``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Request,
    current_app,
    g,
    redirect,
    request,
    url_for,
)
from flask_login import current_user
from flask_wtf.csrf import CSRFError, validate_csrf
from werkzeug.exceptions import SecurityError
from werkzeug.routing import IntegerConverter
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData
from wtforms.validators import ValidationError as WTFValidationError

from .formats import (
    every,
    humansize,
    isotime,
    moved_in_onedrive,
    reltime,
    state_badge,
    state_sentence,
    until,
)
from .scope import reset_scope, set_scope
from .services import quota
from .services.library import sync_fix
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
        # The session cookie names a server-side session, not a user: ask flask-login.
        raw = current_user.id if current_user.is_authenticated else None
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
    # No other site may embed our responses (an <img> of a download is an XS-leak, probe L6).
    response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if request.endpoint != "static" and g.get("_scope_user") is not None:
        # Signed-in pages list document names: no shared or browser cache keeps them (I8).
        response.headers.setdefault("Cache-Control", "no-store")
    if cfg.get("ENV_NAME") == "production":
        response.headers.setdefault("Strict-Transport-Security", "max-age=63072000")
    return response


def _scope_request() -> None:
    """Scope the request's database work to the signed-in user.

    The user comes from flask-login, which loads it from the session *or* the remember-me
    cookie. Reading ``session["_user_id"]`` here instead missed the remember-me path: that key
    is only filled when flask-login loads the user, later, inside the view, so such a request
    ran unscoped and saw an empty library under row-level security (probe L7).
    """
    uid = None
    if request.endpoint != "static" and current_user.is_authenticated:
        uid = int(current_user.id)
    g._scope_user = uid
    g._scope_token = set_scope(uid)


def _unscope_request(exc: BaseException | None) -> None:
    token = g.pop("_scope_token", None)
    if token is not None:
        reset_scope(token)


class _PrefixedStream:
    """A body stream whose first bytes were already read (and are handed out again first)."""

    def __init__(self, prefix: bytes, rest: Any) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size is None or size < 0:
                data, self._prefix = self._prefix + self._rest.read(), b""
                return bytes(data)
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return bytes(self._rest.read(size))

    def readable(self) -> bool:
        return True


def _first_part_token() -> str | None:
    """Read just the first part of a multipart body; return it if it is the CSRF field.

    Browsers send parts in form order and our upload forms put ``csrf_token`` first, so the
    token is known before any file part exists. The bytes read are put back for the parser.
    """
    boundary = request.mimetype_params.get("boundary")
    if not boundary:
        return None
    stream = request.stream
    decoder = MultipartDecoder(boundary.encode(), max_form_memory_size=4096)
    seen: list[bytes] = []
    value: list[bytes] = []
    token: str | None = None
    done = False
    try:
        while not done and sum(map(len, seen)) < _PEEK_LIMIT:
            chunk = stream.read(4096)
            seen.append(chunk)
            decoder.receive_data(chunk or None)
            event = decoder.next_event()
            while not isinstance(event, NeedData | Epilogue):
                if isinstance(event, File) or (
                    isinstance(event, Field) and event.name != "csrf_token"
                ):
                    done = True
                    break
                if isinstance(event, Data):
                    value.append(event.data)
                    if not event.more_data:
                        token = b"".join(value).decode("utf-8", "replace")
                        done = True
                        break
                event = decoder.next_event()
            if not chunk:
                break
    except ValueError:  # a malformed body: the parser will say so properly
        token = None
    request.__dict__["stream"] = _PrefixedStream(b"".join(seen), stream)
    return token


_PEEK_LIMIT = 64 * 1024


def _guard_multipart() -> Any:
    """Refuse a multipart body, the only kind that streams to disk, before reading a byte of it
    unless a signed-in user sends it with a valid CSRF token (probe L3).

    Runs before Flask-WTF's own check, which would parse (and store) the whole body first.
    """
    if request.method != "POST" or request.mimetype != "multipart/form-data":
        return None
    if g.get("_scope_user") is None:
        response = current_app.login_manager.unauthorized()  # type: ignore[attr-defined]
        response = current_app.make_response(response)
        response.headers["Connection"] = "close"  # the unread body must not become a request
        return response
    token = request.headers.get("X-CSRFToken") or _first_part_token()
    try:
        validate_csrf(token)
    except WTFValidationError as exc:
        raise CSRFError(str(exc)) from None
    return None


def _discard_incoming(exc: BaseException | None) -> None:
    """Delete upload parts that no service kept (failed form, CSRF error, dropped client)."""
    for incoming in g.pop("incoming_files", []):
        if incoming.path.exists():
            incoming.close()
            incoming.path.unlink(missing_ok=True)


class BoundedIntConverter(IntegerConverter):
    """``<int:…>`` that matches only ids a database integer can hold (probe L8: a 30-digit id
    overflowed SQLite and PostgreSQL with a 500; now it is simply not found)."""

    def __init__(self, url_map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**31 - 1)
        super().__init__(url_map, *args, **kwargs)


class AccessLogRedactor(logging.Filter):
    """Keep one-time secrets out of the development server's access log (probe I2): the OAuth
    callback's ``code`` and ``state``, and the tokens in reset and sign-up links."""

    SECRET_PATHS = re.compile(
        r"(/settings/onedrive/callback)\?\S*|(/password/reset/|/signup/)(?!complete\b)[^\s?]+"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the request line of a record, if it has one."""
        if isinstance(record.args, tuple) and record.args and isinstance(record.args[0], str):
            line = self.SECRET_PATHS.sub(
                lambda m: (m.group(1) + "?…") if m.group(1) else m.group(2) + "…", record.args[0]
            )
            record.args = (line, *record.args[1:])
        return True


def configure(app: Flask) -> None:
    """Wire the request class, headers, request scoping and template filters into ``app``."""
    _ensure_secret_key(app)
    app.url_map.converters["int"] = BoundedIntConverter
    werkzeug_log = logging.getLogger("werkzeug")
    if not any(isinstance(f, AccessLogRedactor) for f in werkzeug_log.filters):
        werkzeug_log.addFilter(AccessLogRedactor())
    app.request_class = StreamingRequest
    app.after_request(_security_headers)
    app.before_request(_scope_request)
    app.before_request(_guard_multipart)
    app.teardown_request(_discard_incoming)
    app.teardown_request(_unscope_request)
    app.jinja_env.filters["humansize"] = humansize
    app.jinja_env.filters["reltime"] = reltime
    app.jinja_env.filters["isotime"] = isotime
    app.jinja_env.filters["until"] = until
    app.jinja_env.filters["every"] = every
    app.jinja_env.filters["state_badge"] = state_badge
    app.jinja_env.filters["state_sentence"] = state_sentence
    app.jinja_env.globals["moved_in_onedrive"] = moved_in_onedrive
    app.jinja_env.globals["sync_fix"] = sync_fix  # a failed file's way out: rename, replace, retry
    app.context_processor(
        lambda: {
            "endpoints": app.view_functions,  # templates/_nav.html shows only existing pages
            "has_onedrive": "onedrive.settings" in app.view_functions,
        }
    )
    # Browsers ask for /favicon.ico whatever the page says; point them at the SVG.
    app.add_url_rule(
        "/favicon.ico",
        endpoint="favicon",
        view_func=lambda: redirect(url_for("static", filename="img/favicon.svg"), code=301),
    )

    @app.errorhandler(SecurityError)
    def untrusted_host(e: SecurityError) -> Any:
        # A Host outside TRUSTED_HOSTS: no URL can be built for it, so no page either (I3).
        return "This server does not answer to that host name.", 400, {"Content-Type": "text/plain"}
