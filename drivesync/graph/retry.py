"""The pacer and the one decision it follows: ``should_retry``.

Checklist taken from rclone's OneDrive ``shouldRetry``
(https://github.com/rclone/rclone/blob/master/backend/onedrive/onedrive.go) and Microsoft's
throttling guidance (https://learn.microsoft.com/graph/throttling): honour ``Retry-After`` on 429
and 503, back off exponentially otherwise, never retry other 4xx, and treat 507 as final.

Transport failures follow rclone's ``fserrors.ShouldRetry``: a connection dropped, reset or timed
out is worth another try. Over TLS, a drop in the middle of a request body surfaces as
``requests.exceptions.SSLError`` (wrapping ``ssl.SSLEOFError``, ``SSLZeroReturnError``, a bad
record MAC or a ``ConnectionResetError``): that is the same transient fault as over plain HTTP.
Only a certificate that fails verification (untrusted CA, hostname mismatch, expired) and a TLS
configuration that cannot work (no shared cipher or protocol version) are permanent, and so is a
``SSLError`` whose cause cannot be seen.
"""

from __future__ import annotations

import email.utils
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import requests
import urllib3.exceptions

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES: frozenset[int] = frozenset(
    {
        429,  # Too Many Requests: Graph throttling, carries Retry-After (graph/throttling)
        500,  # Internal Server Error: transient per the upload-session best practices
        502,  # Bad Gateway: a front door lost its backend
        503,  # Service Unavailable: throttling on SharePoint/OneDrive, may carry Retry-After
        504,  # Gateway Timeout: often a fragment that took too long (rclone logs a hint)
        509,  # Bandwidth Limit Exceeded: SharePoint's per-tenant egress limit (rclone retries it)
    }
)
# 507 Insufficient Storage is deliberately absent: the drive is full, retrying cannot help.

# Transport failures worth another try (requests.exceptions.SSLError is a ConnectionError too:
# it is told apart by its cause, see transient_transport).
_RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
# OpenSSL reasons (ssl.SSLError.reason) for a TLS setup that no retry can fix: the two ends share
# no protocol version or cipher, or the peer does not speak TLS on that port.
_TLS_CONFIG_REASONS = frozenset(
    {
        "NO_SHARED_CIPHER",
        "NO_CIPHERS_AVAILABLE",
        "NO_PROTOCOLS_AVAILABLE",
        "UNSUPPORTED_PROTOCOL",
        "WRONG_VERSION_NUMBER",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "TLSV1_ALERT_INSUFFICIENT_SECURITY",
        "VERSION_TOO_LOW",
        "UNSAFE_LEGACY_RENEGOTIATION_DISABLED",
    }
)
# What a connection cut mid-transfer raises underneath requests (socket and TLS record layer).
_DROPPED: tuple[type[BaseException], ...] = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ssl.SSLSyscallError,
    ConnectionError,  # the builtin: ConnectionResetError, BrokenPipeError, ConnectionAbortedError
    TimeoutError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds (delta-seconds or HTTP-date).

    RFC 9110 section 10.2.3 allows both forms; Graph sends seconds, proxies sometimes a date.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now or datetime.now(UTC)
        return max(0.0, (when - current).total_seconds())
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """Yield ``exc`` and everything it wraps: args (requests, urllib3), ``reason``, causes."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        wrapped = [cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args]
        todo.extend(w for w in wrapped if isinstance(w, BaseException))


def _reason(exc: ssl.SSLError) -> str | None:
    """Return OpenSSL's reason code (set by the ssl module when it raises; absent otherwise)."""
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else None


def transient_transport(exc: BaseException) -> bool:
    """Return whether a transport failure (a ``requests`` exception) may heal on a retry."""
    chain = list(_causes(exc))
    for cause in chain:
        if isinstance(cause, ssl.SSLCertVerificationError):  # ssl.CertificateError is this too
            return False  # untrusted CA, hostname mismatch, expired: the same on every try
        if isinstance(cause, ssl.SSLError) and _reason(cause) in _TLS_CONFIG_REASONS:
            return False  # no shared protocol version or cipher: a configuration to fix
    if isinstance(exc, requests.exceptions.SSLError):
        # Transient only when we can see the drop underneath: a cut, a reset, a bad record.
        return any(
            isinstance(c, _DROPPED) or (isinstance(c, ssl.SSLError) and _reason(c) is not None)
            for c in chain
        )
    return isinstance(exc, _RETRY_EXCEPTIONS)


def should_retry(outcome: BaseException | requests.Response) -> tuple[bool, float | None]:
    """Return whether to try again after ``outcome`` and the wait the server asked for, if any.

    ``outcome`` is an HTTP response, a ``requests`` transport exception, or an error of ours
    that carries ``retryable`` / ``retry_after`` (``GraphError``). Everything else is final.
    """
    if isinstance(outcome, requests.Response):
        if outcome.status_code not in RETRY_STATUSES:
            return False, None
        return True, parse_retry_after(outcome.headers.get("Retry-After"))
    if isinstance(outcome, requests.exceptions.RequestException):
        if getattr(outcome, "permanent", False):  # e.g. graph.urls refused the URL: never heals
            return False, None
        return transient_transport(outcome), None
    retryable = getattr(outcome, "retryable", None)
    if retryable is True:
        wait = getattr(outcome, "retry_after", None)
        return True, float(wait) if wait is not None else None
    return False, None


@dataclass
class RetryBudget:
    """The attempts and waiting left for one logical operation."""

    pacer: Pacer
    attempts: int = 1
    waited: float = 0.0

    def next_delay(self, exc: BaseException) -> float | None:
        """Return how long to wait before retrying after ``exc``, or None to give up."""
        p = self.pacer
        retry, wait = should_retry(exc)
        if not retry or self.attempts >= p.max_attempts:
            return None
        ceiling = min(p.cap, p.base * (2 ** (self.attempts - 1)))
        delay = p.rand() * ceiling  # "full jitter" (AWS architecture blog, exponential backoff)
        if wait is not None:
            delay = max(delay, wait)  # the server's word is a floor, not a hint
        if self.waited + delay > p.max_total_wait:
            return None
        self.attempts += 1
        self.waited += delay
        return delay


class Pacer:
    """Call functions, retrying transient failures with capped, jittered exponential backoff."""

    def __init__(
        self,
        max_attempts: int = 6,
        base: float = 0.5,
        cap: float = 30.0,
        max_total_wait: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.base = base
        self.cap = cap
        self.max_total_wait = max_total_wait
        self.sleep = sleep
        self.rand = rand

    def call(self, fn: Callable[[], T]) -> T:
        """Return ``fn()``, retrying it while it fails transiently and the budget lasts."""
        budget = RetryBudget(self)
        while True:
            try:
                return fn()
            except Exception as exc:
                delay = budget.next_delay(exc)
                if delay is None:
                    raise
                logger.warning(
                    "Graph call failed (%s), retry %d/%d in %.2fs",
                    _describe(exc),
                    budget.attempts,
                    self.max_attempts,
                    delay,
                )
                self.sleep(delay)


def _describe(exc: BaseException) -> str:
    # Never str() a requests exception: its text carries the URL, query string included.
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    if status or code:
        return f"{status or ''} {code or ''}".strip()
    return type(exc).__name__
