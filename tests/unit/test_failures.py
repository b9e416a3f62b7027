"""The failure classification table and the per-file retry schedule (services/failures.py)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import pytest
import requests
import urllib3

from drivesync.graph.errors import (
    AuthError,
    FileTooLargeError,
    GraphError,
    InsufficientStorageError,
    IntegrityError,
    NameNotAllowedError,
    network_error,
)
from drivesync.services import failures
from drivesync.services.failures import PERMANENT, TRANSIENT, USER, Failure, classify


def _tls_cut() -> requests.exceptions.SSLError:
    """What requests raises when a TLS connection is cut in the middle of a request body."""
    return requests.exceptions.SSLError(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))


def _tls_untrusted() -> requests.exceptions.SSLError:
    """What requests raises when the server's certificate does not verify."""
    reason = urllib3.exceptions.SSLError(
        ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
    )
    return requests.exceptions.SSLError(
        urllib3.exceptions.MaxRetryError(None, "https://graph.example/", reason)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (GraphError("busy", status=429, code="activityLimitReached", retry_after=30), TRANSIENT,
         "activityLimitReached"),
        (GraphError("down", status=503), TRANSIENT, "http503"),
        (GraphError("gateway", status=504), TRANSIENT, "http504"),
        (GraphError("oops", status=500, code="generalException"), TRANSIENT, "generalException"),
        (GraphError("locked", status=423, code="resourceLocked"), TRANSIENT, "resourceLocked"),
        (GraphError("gone", status=404, code="itemNotFound", inner_code="uploadSessionNotFound"),
         TRANSIENT, "itemNotFound"),
        (IntegrityError("a", "b"), TRANSIENT, "hashMismatch"),
        (InsufficientStorageError("full", code="quotaLimitReached"), USER, "quotaLimitReached"),
        (GraphError("full", status=507), USER, "http507"),
        (GraphError("no", status=403, code="accessDenied"), USER, "accessDenied"),
        (NameNotAllowedError("bad name", "a:b"), PERMANENT, "nameNotAllowed"),
        (FileTooLargeError(300 * 1024**3, 250 * 1024**3), PERMANENT, "fileTooLarge"),
        (GraphError("virus", status=409, code="malwareDetected"), PERMANENT, "malwareDetected"),
        (GraphError("bad", status=400, code="invalidRequest"), PERMANENT, "invalidRequest"),
        (GraphError("weird", status=418), PERMANENT, "http418"),
        (FileNotFoundError(2, "gone"), PERMANENT, failures.MISSING_CODE),
        (PermissionError(13, "denied"), PERMANENT, failures.MISSING_CODE),
        (requests.exceptions.ConnectionError("reset"), TRANSIENT, "networkError"),
        (requests.exceptions.ReadTimeout("slow"), TRANSIENT, "networkError"),
        (requests.exceptions.ChunkedEncodingError("cut"), TRANSIENT, "networkError"),
        (network_error(requests.exceptions.ConnectionError("reset")), TRANSIENT, "networkError"),
        (RuntimeError("a bug"), TRANSIENT, failures.UNEXPECTED_CODE),
    ],
)  # fmt: skip
def test_classification_table(exc: BaseException, kind: str, code: str) -> None:
    """Each failure lands in its kind with a short code (the table in services/failures.py)."""
    failure = classify(exc)
    assert (failure.kind, failure.code) == (kind, code)


def test_tls_cut_mid_body_is_transient() -> None:
    """A TLS connection cut mid-transfer may heal: transient, raw or wrapped by the Graph layer."""
    assert classify(_tls_cut()).kind == TRANSIENT
    assert classify(network_error(_tls_cut())).kind == TRANSIENT


def test_tls_certificate_failure_is_permanent() -> None:
    """A certificate that does not verify will not heal by waiting: permanent."""
    assert classify(_tls_untrusted()).kind == PERMANENT
    assert classify(network_error(_tls_untrusted())).kind == PERMANENT


def test_retry_after_is_kept() -> None:
    """The server's Retry-After travels with the classification."""
    failure = classify(GraphError("busy", status=429, retry_after=120))
    assert failure.retry_after == 120 and failure.scheduled


def test_quota_failures_wait_for_room_and_others_do_not() -> None:
    """Only a full drive among the user's failures is scheduled (behind a quota check)."""
    assert classify(InsufficientStorageError("full")).waits_for_quota
    assert classify(InsufficientStorageError("full")).scheduled
    denied = classify(GraphError("no", status=403, code="accessDenied"))
    assert not denied.waits_for_quota and not denied.scheduled
    assert not classify(NameNotAllowedError("bad")).scheduled


def test_auth_errors_are_not_file_failures_but_classify_safely() -> None:
    """An AuthError (handled as Reconnect before the table) still never counts as transient."""
    assert classify(AuthError("revoked", code="invalid_grant", status=400)).kind == PERMANENT


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_bounds(attempt: int) -> None:
    """Each wait lies between one minute and the doubling ceiling, never above six hours."""
    ceiling = min(failures.BACKOFF_CAP, 60.0 * 2**attempt)
    low = failures.backoff_delay(attempt, rand=lambda: 0.0)
    high = failures.backoff_delay(attempt, rand=lambda: 0.999999)
    if ceiling < failures.BACKOFF_CAP:
        assert low == 60.0
        assert ceiling - 1 < high <= ceiling
    else:
        assert low == high == failures.BACKOFF_CAP


def test_backoff_first_tries_are_minutes_apart() -> None:
    """Try 2 comes one to two minutes after the first failure, try 4 within eight minutes."""
    assert 60 <= failures.backoff_delay(1) <= 120
    assert 60 <= failures.backoff_delay(3) <= 480


def test_backoff_reaches_the_cap_then_every_six_hours() -> None:
    """From attempt 9 on the wait is exactly the six-hour cap, however many attempts."""
    assert failures.backoff_delay(8, rand=lambda: 1.0) < failures.BACKOFF_CAP
    for attempt in (9, 10, 50, 10_000):
        assert failures.backoff_delay(attempt) == 6 * 3600


def test_backoff_jitter_spreads_the_waits() -> None:
    """Full jitter: many draws cover most of the range instead of one value."""
    import random

    rng = random.Random(7)
    draws = [failures.backoff_delay(5, rand=rng.random) for _ in range(500)]
    assert min(draws) < 60 + 0.1 * (1920 - 60)
    assert max(draws) > 1920 - 0.1 * (1920 - 60)
    assert len({round(d) for d in draws}) > 300


def test_backoff_honours_a_longer_retry_after_only() -> None:
    """Retry-After is a floor: longer than the backoff wins, shorter does not shorten it."""
    assert failures.backoff_delay(1, retry_after=900, rand=lambda: 0.5) == 900
    assert failures.backoff_delay(1, retry_after=5, rand=lambda: 0.5) == 90
    assert failures.backoff_delay(20, retry_after=8 * 3600) == 8 * 3600


def test_backoff_rejects_attempt_zero() -> None:
    """Attempts count failures: zero is a caller's mistake."""
    with pytest.raises(ValueError, match="starts at 1"):
        failures.backoff_delay(0)


def test_failed_values_schedule_transient_and_quota_only() -> None:
    """A transient failure gets a next try; a permanent one none; attempts count up."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    values = failures.failed_values(Failure(TRANSIENT, "http503"), 2, now, rand=lambda: 0.0)
    assert values == {
        "failure_kind": TRANSIENT,
        "failure_code": "http503",
        "sync_attempts": 3,
        "next_attempt_at": now + timedelta(seconds=60),
    }
    quota = failures.failed_values(Failure(USER, "quotaLimitReached"), 0, now, rand=lambda: 0.0)
    assert quota["next_attempt_at"] == now + timedelta(seconds=60)
    permanent = failures.failed_values(Failure(PERMANENT, "nameNotAllowed"), 0, now)
    assert permanent["next_attempt_at"] is None and permanent["sync_attempts"] == 1
