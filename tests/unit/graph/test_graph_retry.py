"""The pacer: Retry-After, backoff, caps, and what is never retried."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import requests

from drivesync.graph.errors import GraphError, InsufficientStorageError
from drivesync.graph.retry import RETRY_STATUSES, Pacer, parse_retry_after


def flaky(failures: list[BaseException], result: str = "ok") -> tuple[Callable[[], str], list[int]]:
    """Return a function that raises each of ``failures`` in turn, then returns ``result``."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return result

    return fn, calls


def test_retry_statuses_are_the_documented_ones() -> None:
    """429 and the transient 5xx are retried; 507 is not."""
    assert {429, 500, 502, 503, 504} <= RETRY_STATUSES and 507 not in RETRY_STATUSES


def test_parse_retry_after_seconds() -> None:
    """Delta-seconds parse as a float."""
    assert parse_retry_after("120") == 120.0 and parse_retry_after(" 1.5 ") == 1.5


def test_parse_retry_after_http_date() -> None:
    """An HTTP-date becomes the seconds left until then."""
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "nan"])
def test_parse_retry_after_garbage(value: str | None) -> None:
    """Missing or unreadable values give None (negative clamps to zero)."""
    result = parse_retry_after(value)
    assert result is None or result == 0.0


def test_429_retry_after_is_a_floor(pacer: Pacer, sleeps: list[float]) -> None:
    """A 429's Retry-After is waited in full even when the backoff would be shorter."""
    fn, calls = flaky([GraphError("slow", status=429, retry_after=12.0)])
    assert pacer.call(fn) == "ok"
    assert sleeps == [12.0] and len(calls) == 2


def test_503_then_success_backs_off_with_jitter(pacer: Pacer, sleeps: list[float]) -> None:
    """503 without Retry-After waits rand() x base x 2^n, then succeeds."""
    fn, calls = flaky([GraphError("x", status=503), GraphError("x", status=503)])
    assert pacer.call(fn) == "ok"
    assert sleeps == [0.25, 0.5] and len(calls) == 3


def test_attempts_are_capped(sleeps: list[float]) -> None:
    """A failure that never heals is raised after max_attempts calls."""
    pacer = Pacer(max_attempts=4, sleep=sleeps.append, rand=lambda: 1.0)
    fn, calls = flaky([GraphError("x", status=502) for _ in range(10)])
    with pytest.raises(GraphError):
        pacer.call(fn)
    assert len(calls) == 4 and sleeps == [0.5, 1.0, 2.0]


def test_backoff_ceiling_is_capped(sleeps: list[float]) -> None:
    """The exponential ceiling stops at ``cap``."""
    pacer = Pacer(
        max_attempts=10, cap=3.0, max_total_wait=1000, sleep=sleeps.append, rand=lambda: 1.0
    )
    fn, _ = flaky([GraphError("x", status=500) for _ in range(6)])
    pacer.call(fn)
    assert sleeps == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_total_wait_is_capped(sleeps: list[float]) -> None:
    """Retry-After beyond the total-wait budget gives up instead of sleeping for ages."""
    pacer = Pacer(max_total_wait=120.0, sleep=sleeps.append)
    fn, calls = flaky([GraphError("x", status=429, retry_after=100.0) for _ in range(3)])
    with pytest.raises(GraphError) as info:
        pacer.call(fn)
    assert sleeps == [100.0] and len(calls) == 2
    assert info.value.retry_after == 100.0  # the caller can schedule a later attempt


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 412, 423])
def test_other_4xx_are_not_retried(pacer: Pacer, sleeps: list[float], status: int) -> None:
    """Client errors other than 429 are raised at once."""
    fn, calls = flaky([GraphError("x", status=status)])
    with pytest.raises(GraphError):
        pacer.call(fn)
    assert len(calls) == 1 and sleeps == []


def test_507_is_final_with_a_human_message(pacer: Pacer, sleeps: list[float]) -> None:
    """A full drive is never retried and says so plainly."""
    fn, calls = flaky([InsufficientStorageError("quota", code="quotaLimitReached")])
    with pytest.raises(InsufficientStorageError) as info:
        pacer.call(fn)
    assert len(calls) == 1 and sleeps == []
    assert "OneDrive is full" in info.value.human_message()


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectionError("reset"),
        requests.exceptions.ReadTimeout("slow"),
        requests.exceptions.ChunkedEncodingError("cut"),
    ],
)
def test_transport_errors_are_retried(
    pacer: Pacer, sleeps: list[float], exc: BaseException
) -> None:
    """Dropped connections and timeouts are retried."""
    fn, calls = flaky([exc])
    assert pacer.call(fn) == "ok" and len(calls) == 2 and len(sleeps) == 1


def test_tls_errors_are_not_retried(pacer: Pacer) -> None:
    """A certificate failure is raised at once (SSLError is a ConnectionError subclass)."""
    fn, calls = flaky([requests.exceptions.SSLError("bad cert")])
    with pytest.raises(requests.exceptions.SSLError):
        pacer.call(fn)
    assert len(calls) == 1


def test_unrelated_exceptions_pass_through(pacer: Pacer) -> None:
    """Programming errors are not retried."""
    fn, calls = flaky([KeyError("x")])
    with pytest.raises(KeyError):
        pacer.call(fn)
    assert len(calls) == 1
