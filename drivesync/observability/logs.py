"""Logs: JSON in production, readable text in development, a request id in every record.

One handler on the root logger, installed by ``configure`` when the app is created (web
processes and Celery workers both build their app through ``create_app``). The request id lives
in a context variable: the web hooks bind it for each request, and ``carry`` / the Celery
publish hook hand it to the jobs a request enqueues.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, ParamSpec, TypeVar

from celery import signals
from pythonjsonlogger.json import JsonFormatter

P = ParamSpec("P")
R = TypeVar("R")

#: Only ids made of these characters, up to this length, are taken from a trusted proxy.
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
#: The Celery message header that carries the request id to a worker.
TASK_HEADER = "drivesync_request_id"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
JSON_FIELDS = ["asctime", "levelname", "name", "message", "request_id"]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "drivesync_request_id", default=None
)


def current_request_id() -> str | None:
    """Return the request id bound to the current context, if any."""
    return _request_id.get()


def new_request_id() -> str:
    """Return a fresh request id."""
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str | None:
    """Return ``value`` if it is an acceptable request id from a proxy, else None."""
    if value and _VALID_ID.fullmatch(value):
        return value
    return None


def bind(request_id: str | None) -> contextvars.Token[str | None]:
    """Bind ``request_id`` to the current context until ``unbind``."""
    return _request_id.set(request_id)


def unbind(token: contextvars.Token[str | None]) -> None:
    """Undo ``bind``."""
    _request_id.reset(token)


@contextmanager
def bound(request_id: str | None) -> Iterator[None]:
    """Bind ``request_id`` inside the block."""
    token = bind(request_id)
    try:
        yield
    finally:
        unbind(token)


def carry(fn: Callable[P, R]) -> Callable[P, R]:
    """Return ``fn`` wrapped to run with the caller's request id (for thread-pool jobs)."""
    request_id = current_request_id()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with bound(request_id):
            return fn(*args, **kwargs)

    return run


class RequestIdFilter(logging.Filter):
    """Give every record a ``request_id`` attribute ("-" outside a request or job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the bound request id to ``record``."""
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id() or "-"
        return True


def formatter(fmt: str) -> logging.Formatter:
    """Return the formatter for ``fmt`` ("json" or "text")."""
    if fmt == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level"})
    return logging.Formatter(TEXT_FORMAT)


_HANDLER_NAME = "drivesync"


def configure(fmt: str, level: str, stream: IO[str] | None = None) -> logging.Handler:
    """Install (or replace) the process's one log handler on the root logger; return it."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def installed_handler() -> logging.StreamHandler[Any] | None:
    """Return the handler ``configure`` installed, if any (tests point it at a buffer)."""
    for h in logging.getLogger().handlers:
        if h.get_name() == _HANDLER_NAME and isinstance(h, logging.StreamHandler):
            return h
    return None


def install_celery_hooks() -> None:
    """Carry the request id from the publisher to the worker through a message header."""
    signals.before_task_publish.connect(_publish, weak=False, dispatch_uid="drivesync-rid-pub")
    signals.task_prerun.connect(_prerun, weak=False, dispatch_uid="drivesync-rid-pre")
    signals.task_postrun.connect(_postrun, weak=False, dispatch_uid="drivesync-rid-post")


def _publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    rid = current_request_id()
    if headers is not None and rid:
        headers[TASK_HEADER] = rid


_task_tokens: dict[str, contextvars.Token[str | None]] = {}


def _prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    rid = valid_request_id(getattr(getattr(task, "request", None), TASK_HEADER, None))
    _task_tokens[task_id] = bind(rid or new_request_id())


def _postrun(task_id: str = "", **_: Any) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        try:
            unbind(token)
        except ValueError:  # reset from another context (a different worker thread)
            bind(None)


#: Path segments this long are opaque tokens (password-reset and sign-up links): never logged.
_LONG_SEGMENT = re.compile(r"/[^/]{33,}")


class AccessJsonFormatter(JsonFormatter):
    """gunicorn's access records as JSON, from its atoms: never the query string (OAuth codes
    and states travel there) and never a long opaque path segment (reset and sign-up tokens)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level"})
        super().__init__(["asctime", "levelname", "name", "message"], *args, **kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Add the request's method, path, status, size, duration, address and request id."""
        super().add_fields(log_data, record, message_dict)
        atoms: Any = record.args if hasattr(record.args, "__getitem__") else {}

        def atom(key: str) -> Any:
            try:
                value = atoms[key]
            except (KeyError, TypeError, IndexError):
                return None
            return None if value in ("-", "") else value

        log_data["message"] = "request"
        log_data["method"] = atom("m")
        log_data["path"] = _LONG_SEGMENT.sub("/…", str(atom("U") or ""))
        log_data["status"] = int(atom("s") or 0)
        log_data["bytes"] = int(atom("B") or 0)
        log_data["duration_ms"] = round(int(atom("D") or 0) / 1000, 1)
        log_data["remote_addr"] = atom("h")
        log_data["request_id"] = atom("{x-request-id}o")
