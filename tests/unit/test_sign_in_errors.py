"""Token-endpoint answers told apart by AADSTS code: what each does to the connection."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses
from flask import Flask

from drivesync import events
from drivesync.extensions import db
from drivesync.graph import oauth
from drivesync.graph.errors import AuthError, GraphError
from drivesync.graph.retry import Pacer
from drivesync.models import Integration
from drivesync.scope import user_scope
from drivesync.services import integrations
from tests.unit.test_integrations import store_tokens

CLIENT_ID = "11111111-2222-4333-8444-555555555555"
CLIENT_SECRET = "app-secret-VALUE-0123456789"
REFRESH = "refresh-token-SECRET-0123456789"
SETTINGS = oauth.OAuthSettings(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
TOKEN_URL = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
ADMIN_LINK = f"https://login.microsoftonline.com/organizations/adminconsent?client_id={CLIENT_ID}"

# The expected outcome of each code, written out here rather than read from the product table.
RECONNECT_CODES = {
    700082: "refresh_token_inactive",
    70008: "refresh_token_inactive",
    50173: "grant_revoked",
    70043: "sign_in_frequency",
    50076: "mfa_required",
    50079: "mfa_enrollment_required",
    65001: "consent_missing",
    90094: "admin_consent_required",
    90008: "admin_consent_required",
}
OPERATOR_CODES = {7000222: "client_secret_expired", 7000215: "client_secret_invalid"}


def microsoft_error(error: str, code: int, text: str = "Something went wrong.") -> dict[str, Any]:
    """Return a token-endpoint error body in Microsoft's shape."""
    return {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {text}\r\nTrace ID: 0000aaaa-11bb\r\n"
            "Correlation ID: aaaa0000-bb11\r\nTimestamp: 2026-12-04 06:00:00Z"
        ),
        "error_codes": [code],
        "timestamp": "2026-12-04 06:00:00Z",
        "trace_id": "0000aaaa-11bb",
        "correlation_id": "aaaa0000-bb11",
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }


def _texts(exc: GraphError) -> list[str]:
    return [str(exc), repr(exc), exc.message, exc.human_message()]


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """Mock HTTP: every request must be expected."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# -- classification (graph/oauth.py, no Flask) ---------------------------------------------------


@pytest.mark.parametrize(("code", "reason"), sorted(RECONNECT_CODES.items()))
def test_user_codes_raise_sign_in_error_with_their_reason(
    rsps: responses.RequestsMock, code: int, reason: str
) -> None:
    """Each reconnect code raises SignInError (an AuthError) with its own reason and sentence."""
    rsps.add(
        responses.POST,
        TOKEN_URL,
        status=400,
        json=microsoft_error("invalid_grant", code, f"token {REFRESH} refused"),
    )
    with pytest.raises(oauth.SignInError) as info:
        oauth.refresh(SETTINGS, REFRESH)
    err = info.value
    assert isinstance(err, AuthError) and not err.retryable
    assert err.problem.reason == reason and err.inner_code == f"AADSTS{code}"
    assert err.human_message() != AuthError.default_human  # its own plain sentence
    assert (
        "Reconnect OneDrive" in err.human_message() or "reconnect OneDrive" in err.human_message()
    )
    for text in _texts(err):
        assert REFRESH not in text and CLIENT_SECRET not in text and "Trace ID" not in text
    if reason == "admin_consent_required":
        assert err.problem.action is oauth.Action.ADMIN_CONSENT
        assert ADMIN_LINK in err.human_message()
    else:
        assert err.problem.action is oauth.Action.RECONNECT
        assert "adminconsent" not in err.human_message()


def test_each_reconnect_reason_has_a_distinct_sentence() -> None:
    """Different reasons never share a sentence, and one reason never has two."""
    by_reason: dict[str, set[str]] = {}
    for code, reason in RECONNECT_CODES.items():
        by_reason.setdefault(reason, set()).add(oauth.TOKEN_PROBLEMS[code].message)
    assert all(len(messages) == 1 for messages in by_reason.values())
    sentences = [next(iter(m)) for m in by_reason.values()]
    assert len(set(sentences)) == len(sentences)


@pytest.mark.parametrize(("code", "reason"), sorted(OPERATOR_CODES.items()))
def test_client_secret_codes_are_the_operators_problem(
    rsps: responses.RequestsMock, code: int, reason: str
) -> None:
    """An expired or wrong client secret is no reconnect: a retryable outage spaced past a pacer."""
    rsps.add(responses.POST, TOKEN_URL, status=401, json=microsoft_error("invalid_client", code))
    with pytest.raises(oauth.AppCredentialsError) as info:
        oauth.refresh(SETTINGS, REFRESH)
    err = info.value
    assert not isinstance(err, AuthError)
    assert err.problem.reason == reason and err.code == "invalid_client" and err.status == 401
    assert err.retryable and err.retry_after is not None and err.retry_after > 120
    assert "do not need to reconnect" in err.human_message()
    assert "DRIVESYNC_MS_CLIENT_SECRET" in err.operator_action
    for text in [*_texts(err), err.operator_action]:
        assert CLIENT_SECRET not in text and REFRESH not in text


def test_code_in_the_description_only_is_still_recognised(rsps: responses.RequestsMock) -> None:
    """Without error_codes, the AADSTS number at the start of the description decides."""
    body = microsoft_error("invalid_grant", 50173)
    del body["error_codes"]
    rsps.add(responses.POST, TOKEN_URL, status=400, json=body)
    with pytest.raises(oauth.SignInError) as info:
        oauth.refresh(SETTINGS, REFRESH)
    assert info.value.problem.reason == "grant_revoked"


def test_unknown_invalid_grant_keeps_the_generic_reconnect(rsps: responses.RequestsMock) -> None:
    """invalid_grant with a code no rule knows stays a plain AuthError with the usual sentence."""
    rsps.add(responses.POST, TOKEN_URL, status=400, json=microsoft_error("invalid_grant", 9002313))
    with pytest.raises(AuthError) as info:
        oauth.refresh(SETTINGS, REFRESH)
    assert not isinstance(info.value, oauth.SignInError)
    assert info.value.human_message() == AuthError.default_human


def test_other_invalid_client_codes_are_the_operators_too(rsps: responses.RequestsMock) -> None:
    """invalid_client with another code (no secret sent) is an operator problem, not the user's."""
    rsps.add(responses.POST, TOKEN_URL, status=401, json=microsoft_error("invalid_client", 7000218))
    with pytest.raises(oauth.AppCredentialsError) as info:
        oauth.refresh(SETTINGS, REFRESH)
    assert info.value.problem.reason == "client_rejected"


@pytest.mark.parametrize(
    ("status", "body", "retry_after"),
    [
        (429, microsoft_error("temporarily_unavailable", 90033), "7"),
        (500, microsoft_error("server_error", 90033), None),
        (502, None, None),
        (503, microsoft_error("temporarily_unavailable", 90033), "3"),
        (504, None, None),
        (400, microsoft_error("temporarily_unavailable", 90033), None),
    ],
)
def test_busy_or_failing_endpoint_is_retryable_and_never_a_reconnect(
    rsps: responses.RequestsMock, status: int, body: dict[str, Any] | None, retry_after: str | None
) -> None:
    """429, 5xx and temporarily_unavailable are retryable GraphErrors carrying Retry-After."""
    headers = {"Retry-After": retry_after} if retry_after else {}
    if body is None:
        rsps.add(
            responses.POST, TOKEN_URL, status=status, body="<html>busy</html>", headers=headers
        )
    else:
        rsps.add(responses.POST, TOKEN_URL, status=status, json=body, headers=headers)
    with pytest.raises(GraphError) as info:
        oauth.refresh(SETTINGS, REFRESH)
    err = info.value
    assert not isinstance(err, AuthError | oauth.AppCredentialsError)
    assert err.retryable
    assert err.retry_after == (float(retry_after) if retry_after else None)


@pytest.mark.parametrize(
    ("tenant", "expected_tenant"),
    [("common", "organizations"), ("contoso.onmicrosoft.com", "contoso.onmicrosoft.com")],
)
def test_admin_consent_url_is_built_from_the_settings(tenant: str, expected_tenant: str) -> None:
    """The admin-consent link uses the configured authority, tenant and client id."""
    settings = oauth.OAuthSettings(
        client_id="app id&x", authority="https://login.example/", tenant=tenant
    )
    assert settings.admin_consent_url == (
        f"https://login.example/{expected_tenant}/adminconsent?client_id=app+id%26x"
    )


# -- what the service does with them (services/integrations.py) ----------------------------------


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """A configured Microsoft app at the real authority (mocked by `responses`)."""
    return {"MS_CLIENT_ID": CLIENT_ID, "MS_CLIENT_SECRET": CLIENT_SECRET}


@pytest.fixture
def expired(app: Flask, make_user: Callable[..., int]) -> tuple[int, int]:
    """A connected user whose access token has expired, so the next Graph call refreshes."""
    return store_tokens(app, make_user, refresh_token=REFRESH, expires_in=-60)


@pytest.fixture
def heard() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Record reconnect_needed and app_credentials_rejected signals."""
    got: list[tuple[str, dict[str, Any]]] = []

    def on_reconnect(_sender: object, **kw: Any) -> None:
        got.append(("reconnect_needed", kw))

    def on_rejected(_sender: object, **kw: Any) -> None:
        got.append(("app_credentials_rejected", kw))

    events.reconnect_needed.connect(on_reconnect)
    events.app_credentials_rejected.connect(on_rejected)
    yield got
    events.reconnect_needed.disconnect(on_reconnect)
    events.app_credentials_rejected.disconnect(on_rejected)


@pytest.fixture(autouse=True)
def _no_operator_notice() -> Iterator[None]:
    """Each test starts and ends without an operator notice (it is process state)."""
    integrations._clear_operator_notice()
    yield
    integrations._clear_operator_notice()


class Sleeps:
    """A pacer's sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _provider(uid: int, iid: int, sleeps: Sleeps | None = None) -> integrations.TokenProvider:
    pacer = Pacer(max_attempts=4, base=1.0, cap=8.0, max_total_wait=30.0, sleep=sleeps or Sleeps())
    return integrations.TokenProvider(uid, iid, pacer=pacer)


@pytest.mark.parametrize(("code", "reason"), sorted(RECONNECT_CODES.items()))
def test_reconnect_codes_mark_the_connection_with_their_sentence(
    app: Flask,
    expired: tuple[int, int],
    rsps: responses.RequestsMock,
    heard: list[tuple[str, dict[str, Any]]],
    code: int,
    reason: str,
) -> None:
    """A refresh refused with a user code marks Reconnect needed with its sentence, once."""
    uid, iid = expired
    rsps.add(responses.POST, TOKEN_URL, status=400, json=microsoft_error("invalid_grant", code))
    with app.app_context(), user_scope(uid):
        with pytest.raises(oauth.SignInError) as info:
            _provider(uid, iid)()
        integration = db.session.get(Integration, iid)
        assert integration is not None and integration.status == "needs_reauth"
        assert integration.status_reason == info.value.human_message()
        assert integration.status_reason == oauth.TOKEN_PROBLEMS[code].message.format(
            admin_consent_url=ADMIN_LINK
        )
        with pytest.raises(oauth.SignInError):  # a second failure is not a second episode
            _provider(uid, iid)()
    assert len(rsps.calls) == 2  # never retried
    assert heard == [("reconnect_needed", {"user_id": uid, "reason": reason})]
    assert integrations.operator_notice() is None


def test_first_reason_of_an_episode_stays(
    app: Flask,
    expired: tuple[int, int],
    rsps: responses.RequestsMock,
    heard: list[tuple[str, dict[str, Any]]],
) -> None:
    """A later generic reconnect does not overwrite the specific sentence or signal again."""
    uid, iid = expired
    rsps.add(responses.POST, TOKEN_URL, status=400, json=microsoft_error("invalid_grant", 700082))
    with app.app_context(), user_scope(uid):
        with pytest.raises(oauth.SignInError):
            _provider(uid, iid)()
        assert not integrations.mark_needs_reauth(uid, "Something generic.")
        integration = db.session.get(Integration, iid)
        assert integration is not None and "90 days" in (integration.status_reason or "")
    assert [name for name, _kw in heard] == ["reconnect_needed"]


def test_expired_client_secret_is_an_outage_not_a_reconnect(
    app: Flask,
    expired: tuple[int, int],
    rsps: responses.RequestsMock,
    heard: list[tuple[str, dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """7000222 leaves the connection active, logs the operator's fix, and sets the notice."""
    uid, iid = expired
    rsps.add(responses.POST, TOKEN_URL, status=401, json=microsoft_error("invalid_client", 7000222))
    sleeps = Sleeps()
    with app.app_context(), user_scope(uid), caplog.at_level(logging.ERROR):
        with pytest.raises(oauth.AppCredentialsError):
            _provider(uid, iid, sleeps)()
        integration = db.session.get(Integration, iid)
        assert integration is not None and integration.status == "active"
        assert integration.status_reason is None
    assert len(rsps.calls) == 1 and sleeps.delays == []  # no hammering with a bad secret
    notice = integrations.operator_notice()
    assert notice is not None and "do not need to reconnect" in notice
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    line = record.getMessage()
    assert "client_secret_expired" in line and "DRIVESYNC_MS_CLIENT_SECRET" in line
    assert CLIENT_SECRET not in line and REFRESH not in line
    assert heard == [("app_credentials_rejected", {"reason": "client_secret_expired"})]


def test_operator_notice_clears_when_a_refresh_works_again(
    app: Flask, expired: tuple[int, int], rsps: responses.RequestsMock
) -> None:
    """Once Microsoft accepts the app's credentials again, the notice goes away."""
    uid, iid = expired
    rsps.add(responses.POST, TOKEN_URL, status=401, json=microsoft_error("invalid_client", 7000215))
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={"token_type": "Bearer", "access_token": "A1", "expires_in": 3600},
    )
    with app.app_context(), user_scope(uid):
        with pytest.raises(oauth.AppCredentialsError):
            _provider(uid, iid)()
        assert integrations.operator_notice() is not None
        assert _provider(uid, iid)() == "A1"
    assert integrations.operator_notice() is None


def test_503_burst_is_retried_honouring_retry_after_then_succeeds(
    app: Flask,
    expired: tuple[int, int],
    rsps: responses.RequestsMock,
    heard: list[tuple[str, dict[str, Any]]],
) -> None:
    """Two 503s with Retry-After: 2 are waited out (at least 2 s each) and the third try works."""
    uid, iid = expired
    busy = microsoft_error("temporarily_unavailable", 90033)
    for _ in range(2):
        rsps.add(responses.POST, TOKEN_URL, status=503, json=busy, headers={"Retry-After": "2"})
    rsps.add(
        responses.POST,
        TOKEN_URL,
        json={"token_type": "Bearer", "access_token": "A1", "expires_in": 3600},
    )
    sleeps = Sleeps()
    with app.app_context(), user_scope(uid):
        assert _provider(uid, iid, sleeps)() == "A1"
        integration = db.session.get(Integration, iid)
        assert integration is not None and integration.status == "active"
    assert len(sleeps.delays) == 2 and all(d >= 2.0 for d in sleeps.delays)
    assert heard == []


def test_a_storm_longer_than_the_budget_fails_without_marking(
    app: Flask, expired: tuple[int, int], rsps: responses.RequestsMock
) -> None:
    """429s that outlast the retry budget raise a retryable error; the connection stays active."""
    uid, iid = expired
    rsps.add(
        responses.POST,
        TOKEN_URL,
        status=429,
        json=microsoft_error("temporarily_unavailable", 90033),
        headers={"Retry-After": "10"},
    )
    sleeps = Sleeps()
    with app.app_context(), user_scope(uid):
        with pytest.raises(GraphError) as info:
            _provider(uid, iid, sleeps)()
        assert info.value.retryable and not isinstance(info.value, AuthError)
        integration = db.session.get(Integration, iid)
        assert integration is not None and integration.status == "active"
    assert sum(sleeps.delays) <= 30.0 and len(rsps.calls) == len(sleeps.delays) + 1
