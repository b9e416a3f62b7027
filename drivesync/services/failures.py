"""Why a file failed to sync, what that means for the next try, and when that try is.

Every per-file failure is one of three kinds, decided in one table here:

- ``transient``: the network, Microsoft or a lost upload session; the scheduler tries again on a
  per-file schedule (:func:`backoff_delay`), honouring ``Retry-After`` when it asks for longer.
- ``permanent``: this file cannot go as it is (a refused name, too large, malware, its stored
  copy is missing); nothing retries it until the user changes something (Rename, replace, delete)
  or presses Retry.
- ``user``: something outside the file needs the user (OneDrive is full, access was denied).
  A full drive is retried once the quota shows room: the scheduler reads the quota before
  retrying those files (``failure_code`` in :data:`QUOTA_CODES`); the others wait for Retry.

The kinds are stored on the file (``failure_kind``, ``failure_code``, ``sync_attempts``,
``next_attempt_at``, ``failing_since``) next to the reason already shown (``onedrive_error``).
Transport errors are classified by ``graph.retry.is_retryable`` (one place decides whether the
wire may heal: a TLS connection cut mid-body may, a certificate failure may not).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from flask import current_app
from sqlalchemy import func

from ..graph import retry
from ..graph.errors import GraphError
from ..models import File, utcnow

TRANSIENT = "transient"
PERMANENT = "permanent"
USER = "user"
KINDS = (TRANSIENT, PERMANENT, USER)

# The per-file schedule: full jitter above a one-minute floor, the ceiling doubling per attempt
# up to six hours, then every six hours (Microsoft: "use an exponential backoff when no
# Retry-After is given", https://learn.microsoft.com/graph/throttling#best-practices-to-handle-throttling;
# full jitter: https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
BACKOFF_BASE = 60.0
BACKOFF_CAP = 6 * 3600.0

# Codes that mean "the drive is full": retried when the quota shows room, not on a timer alone.
QUOTA_CODES = frozenset({"quotaLimitReached", "insufficientStorage", "http507"})
MISSING_CODE = "storedCopyMissing"  # our own: the library's bytes are gone
UNEXPECTED_CODE = "unexpected"  # our own: a bug or an error nobody classified

# Graph error codes (https://learn.microsoft.com/graph/errors and the OneDrive error list,
# https://learn.microsoft.com/onedrive/developer/rest-api/concepts/errors) and our own codes.
BY_CODE: dict[str, str] = {
    # The drive is full: the user frees space (or buys more); retried when the quota has room.
    "quotaLimitReached": USER,
    "insufficientStorage": USER,
    # Someone changed permissions on the folder: only the user (or their admin) can fix it.
    "accessDenied": USER,
    # Throttling and outages: wait and try again.
    "activityLimitReached": TRANSIENT,
    "serviceNotAvailable": TRANSIENT,
    "generalException": TRANSIENT,
    "timeout": TRANSIENT,
    # Open for editing or checked out on OneDrive: it is released sooner or later.
    "resourceLocked": TRANSIENT,
    # The upload itself went wrong (session expired or lost, bytes mangled): upload again.
    "invalidRange": TRANSIENT,
    "uploadSessionFailed": TRANSIENT,
    "uploadSessionNotFound": TRANSIENT,
    "hashMismatch": TRANSIENT,
    # The file as it is cannot go: the user renames, shrinks, cleans or replaces it.
    "nameNotAllowed": PERMANENT,
    "nameAlreadyExists": PERMANENT,
    "fileTooLarge": PERMANENT,
    "maxFileSizeExceeded": PERMANENT,
    "pathIsTooLong": PERMANENT,
    "malwareDetected": PERMANENT,
    "invalidRequest": PERMANENT,
    MISSING_CODE: PERMANENT,
    # A bug of ours, or an answer nobody expected: retried on the schedule (capped at 6 hours),
    # so a passing fault heals without anyone noticing and a lasting one costs little.
    UNEXPECTED_CODE: TRANSIENT,
}

# HTTP statuses for codes the table does not name.
BY_STATUS: dict[int, str] = {
    **{status: TRANSIENT for status in retry.RETRY_STATUSES},  # 429, 5xx, 509: see graph/retry
    507: USER,  # Insufficient Storage
    403: USER,  # Forbidden: permissions changed
    423: TRANSIENT,  # Locked
    400: PERMANENT,
    413: PERMANENT,  # too large for this kind of request
    415: PERMANENT,
}


@dataclass(frozen=True)
class Failure:
    """How one failure is classified: its kind, a short code, and the server's wait."""

    kind: str
    code: str
    retry_after: float | None = None

    @property
    def waits_for_quota(self) -> bool:
        """Return whether the next try waits for room on the drive (checked by the scheduler)."""
        return self.code in QUOTA_CODES

    @property
    def scheduled(self) -> bool:
        """Return whether the scheduler tries again by itself."""
        return self.kind == TRANSIENT or self.waits_for_quota


def classify(exc: BaseException) -> Failure:
    """Return the classification of a per-file failure (a GraphError, a transport or local one)."""
    if isinstance(exc, GraphError):
        code = exc.code or "error"
        kind = BY_CODE.get(code)
        if kind is None and exc.inner_code:
            kind = BY_CODE.get(exc.inner_code)
        if kind is None and code == "networkError":
            # Wrapped by graph.errors.network_error, which asked graph.retry about the wire.
            kind = TRANSIENT if exc.retryable else PERMANENT
        if kind is None and exc.status is not None:
            kind = BY_STATUS.get(exc.status)
        if kind is None:
            kind = TRANSIENT if exc.retryable else PERMANENT
        if exc.status == 507:
            code = "http507" if code not in QUOTA_CODES else code
        return Failure(kind, code, exc.retry_after)
    if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
        return Failure(PERMANENT, MISSING_CODE)
    if isinstance(exc, requests.exceptions.RequestException):  # graph/retry.py decides
        retryable, wait = retry.should_retry(exc)
        return Failure(TRANSIENT if retryable else PERMANENT, "networkError", wait)
    return Failure(TRANSIENT, UNEXPECTED_CODE)


def backoff_delay(
    attempt: int,
    *,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
) -> float:
    """Return the seconds to wait before try ``attempt + 1`` (``attempt`` 1 = the first failure).

    Full jitter between ``base`` and a ceiling of ``base * 2**attempt`` (2, 4, 8 … minutes);
    once that ceiling reaches ``cap`` the wait is ``cap`` (every six hours). ``Retry-After`` is a
    floor: the server's word wins when it asks for longer.
    """
    if attempt < 1:
        raise ValueError("attempt counts failures and starts at 1")
    ceiling = base * 2.0 ** min(attempt, 32)
    delay = cap if ceiling >= cap else base + rand() * (ceiling - base)
    if retry_after is not None and retry_after > delay:
        delay = float(retry_after)
    return delay


def failed_values(
    failure: Failure,
    attempts_before: int,
    now: datetime,
    *,
    rand: Callable[[], float] = random.random,
    base: float = BACKOFF_BASE,
) -> dict[str, Any]:
    """Return the File columns recording ``failure`` as try number ``attempts_before + 1``.

    ``failing_since`` is left to the caller's UPDATE (``coalesce(failing_since, now)``), so the
    first failure of a streak keeps its time across retries.
    """
    attempt = attempts_before + 1
    next_at = None
    if failure.scheduled:
        next_at = now + timedelta(
            seconds=backoff_delay(attempt, retry_after=failure.retry_after, rand=rand, base=base)
        )
    return {
        "failure_kind": failure.kind,
        "failure_code": failure.code[:64],
        "sync_attempts": attempt,
        "next_attempt_at": next_at,
    }


def error_columns(exc: BaseException, attempts_before: int, reason: str) -> dict[str, Any]:
    """Return every File column the engine writes when a try fails with ``exc`` (one call)."""
    now = utcnow()
    return {
        "onedrive_error": reason,
        **failed_values(classify(exc), attempts_before, now, base=retry_base()),
        "failing_since": func.coalesce(File.failing_since, now),
    }


def retry_base() -> float:
    """Return the configured first wait (``SYNC_RETRY_BASE_SECONDS``; tests shorten it)."""
    return float(current_app.config["SYNC_RETRY_BASE_SECONDS"])


# What a success clears.
CLEARED: dict[str, Any] = {
    "failure_kind": None,
    "failure_code": None,
    "sync_attempts": 0,
    "next_attempt_at": None,
    "failing_since": None,
}
