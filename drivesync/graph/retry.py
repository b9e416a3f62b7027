"""The pacer: which failures are retried, for how long, and how far apart.

Checklist taken from rclone's OneDrive ``shouldRetry``
(https://github.com/rclone/rclone/blob/master/backend/onedrive/onedrive.go) and Microsoft's
throttling guidance (https://learn.microsoft.com/graph/throttling): honour ``Retry-After`` on 429
and 503, back off exponentially otherwise, never retry other 4xx, and treat 507 as final.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import requests

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

# Transport failures worth another try. SSLError subclasses ConnectionError but will not heal.
_RETRY_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
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


def is_retryable(exc: BaseException) -> bool:
    """Return whether ``exc`` is a transient failure (retryable GraphError or transport error)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, _RETRY_EXCEPTIONS):
        return True
    return bool(getattr(exc, "retryable", False))


@dataclass
class RetryBudget:
    """The attempts and waiting left for one logical operation."""

    pacer: Pacer
    attempts: int = 1
    waited: float = 0.0

    def next_delay(self, exc: BaseException) -> float | None:
        """Return how long to wait before retrying after ``exc``, or None to give up."""
        p = self.pacer
        if not is_retryable(exc) or self.attempts >= p.max_attempts:
            return None
        ceiling = min(p.cap, p.base * (2 ** (self.attempts - 1)))
        delay = p.rand() * ceiling  # "full jitter" (AWS architecture blog, exponential backoff)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, float(retry_after))  # the server's word is a floor, not a hint
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

    def budget(self) -> RetryBudget:
        """Start a fresh retry budget for one operation (for loops that retry by hand)."""
        return RetryBudget(self)

    def call(self, fn: Callable[[], T]) -> T:
        """Return ``fn()``, retrying it while it fails transiently and the budget lasts."""
        budget = self.budget()
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
