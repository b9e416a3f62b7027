"""OAuth helpers: authorization URL with state and PKCE, code exchange, refresh and its errors."""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from drivesync.graph.errors import AuthError, GraphError
from drivesync.graph.oauth import (
    OAuthSettings,
    authorization_url,
    code_challenge,
    exchange_code,
    refresh,
)

SETTINGS = OAuthSettings(
    client_id="client-123",
    client_secret="client-secret-XYZ",
    tenant="consumers",
    scopes=["offline_access", "User.Read", "Files.ReadWrite"],
    redirect_uri="https://drivesync.example/onedrive/callback",
)
TOKEN_URL = "https://login.microsoftonline.com/consumers/oauth2/v2.0/token"
OLD_REFRESH = "refresh-OLD-0123456789"
NEW_REFRESH = "refresh-NEW-9876543210"
ACCESS = "access-NEW-abcdefghij"


def form(request_body: bytes | str | None) -> dict[str, str]:
    """Decode a form-encoded request body into a flat dict."""
    text = request_body.decode() if isinstance(request_body, bytes) else (request_body or "")
    return {k: v[0] for k, v in parse_qs(text).items()}


def token_body(**extra: object) -> dict[str, object]:
    """A token response as the identity platform sends it (scope omits offline_access)."""
    body: dict[str, object] = {
        "token_type": "Bearer",
        "scope": "User.Read Files.ReadWrite",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": ACCESS,
    }
    body.update(extra)
    return body


def test_authorization_url_has_state_pkce_and_prompt() -> None:
    """The URL carries state, an S256 challenge of the verifier, prompt and the scopes."""
    url, state, verifier = authorization_url(SETTINGS)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "https://login.microsoftonline.com/consumers/oauth2/v2.0/authorize"
    )
    assert query["state"] == state and len(state) >= 32
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == code_challenge(verifier)
    assert 43 <= len(verifier) <= 128 and re.fullmatch(r"[A-Za-z0-9\-._~]+", verifier)
    assert query["prompt"] == "select_account"
    assert query["response_type"] == "code" and query["client_id"] == "client-123"
    assert query["redirect_uri"] == SETTINGS.redirect_uri
    assert query["scope"].split() == SETTINGS.scopes
    assert "client-secret" not in url


def test_each_authorization_url_is_fresh() -> None:
    """State and verifier are new on every call."""
    a, b = authorization_url(SETTINGS), authorization_url(SETTINGS)
    assert a[1] != b[1] and a[2] != b[2]


def test_code_challenge_matches_rfc7636_example() -> None:
    """The S256 challenge matches RFC 7636 appendix B."""
    assert code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )


def test_exchange_sends_verifier_and_redirect_uri(rsps: responses.RequestsMock) -> None:
    """The code exchange posts code, code_verifier, redirect_uri and client credentials."""
    rsps.add(responses.POST, TOKEN_URL, json=token_body(refresh_token=NEW_REFRESH))
    before = time.time()
    token = exchange_code(SETTINGS, "auth-code-1", "verifier-" + "v" * 50)
    sent = form(rsps.calls[0].request.body)
    assert sent["grant_type"] == "authorization_code" and sent["code"] == "auth-code-1"
    assert sent["code_verifier"] == "verifier-" + "v" * 50
    assert sent["redirect_uri"] == SETTINGS.redirect_uri
    assert sent["client_id"] == "client-123" and sent["client_secret"] == "client-secret-XYZ"
    assert token["access_token"] == ACCESS and token["refresh_token"] == NEW_REFRESH
    assert before + 3590 <= token["expires_at"] <= time.time() + 3600


def test_refresh_replaces_a_rotated_refresh_token(rsps: responses.RequestsMock) -> None:
    """A refresh response with a new refresh token returns it."""
    rsps.add(responses.POST, TOKEN_URL, json=token_body(refresh_token=NEW_REFRESH))
    token = refresh(SETTINGS, OLD_REFRESH)
    sent = form(rsps.calls[0].request.body)
    assert sent["grant_type"] == "refresh_token" and sent["refresh_token"] == OLD_REFRESH
    assert sent["client_id"] == "client-123" and sent["client_secret"] == "client-secret-XYZ"
    assert token["refresh_token"] == NEW_REFRESH and token["access_token"] == ACCESS


def test_refresh_keeps_the_old_refresh_token(rsps: responses.RequestsMock) -> None:
    """Without a new refresh token in the response, the old one is kept."""
    rsps.add(responses.POST, TOKEN_URL, json=token_body())
    assert refresh(SETTINGS, OLD_REFRESH)["refresh_token"] == OLD_REFRESH


@pytest.mark.parametrize("error", ["invalid_grant", "interaction_required", "consent_required"])
def test_reauth_errors_raise_auth_error(rsps: responses.RequestsMock, error: str) -> None:
    """Grant errors that need the user raise AuthError with the AADSTS code, no token text."""
    rsps.add(
        responses.POST,
        TOKEN_URL,
        status=400,
        json={
            "error": error,
            "error_description": (
                f"AADSTS70008: The refresh token {OLD_REFRESH} has expired."
                "\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2024"
            ),
            "error_codes": [70008],
        },
    )
    with pytest.raises(AuthError) as info:
        refresh(SETTINGS, OLD_REFRESH)
    err = info.value
    assert err.code == error and err.inner_code == "AADSTS70008" and not err.retryable
    for text in (str(err), repr(err), err.human_message(), err.message):
        assert OLD_REFRESH not in text and "client-secret" not in text
    assert "Trace ID" not in str(err)


def test_other_oauth_errors_are_graph_errors(rsps: responses.RequestsMock) -> None:
    """invalid_client (an expired app secret) is an operator problem, not a reconnect."""
    rsps.add(
        responses.POST,
        TOKEN_URL,
        status=401,
        json={
            "error": "invalid_client",
            "error_description": "AADSTS7000222: The provided client secret keys are expired.",
        },
    )
    with pytest.raises(GraphError) as info:
        refresh(SETTINGS, OLD_REFRESH)
    assert not isinstance(info.value, AuthError)
    assert info.value.code == "invalid_client" and info.value.inner_code == "AADSTS7000222"


def test_token_endpoint_outage_is_retryable(rsps: responses.RequestsMock) -> None:
    """A 503 from the token endpoint is a retryable GraphError with its Retry-After."""
    rsps.add(
        responses.POST,
        TOKEN_URL,
        status=503,
        body="<html>busy</html>",
        headers={"Retry-After": "5"},
    )
    with pytest.raises(GraphError) as info:
        refresh(SETTINGS, OLD_REFRESH)
    assert info.value.retryable and info.value.retry_after == 5.0
    assert not isinstance(info.value, AuthError)


def test_exchange_invalid_grant_is_auth_error(rsps: responses.RequestsMock) -> None:
    """A used or expired authorization code raises AuthError without echoing the code."""
    rsps.add(
        responses.POST,
        TOKEN_URL,
        status=400,
        json={
            "error": "invalid_grant",
            "error_description": "AADSTS54005: Authorization code auth-code-SECRET was used.",
        },
    )
    with pytest.raises(AuthError) as info:
        exchange_code(SETTINGS, "auth-code-SECRET", "v" * 64)
    assert "auth-code-SECRET" not in str(info.value)


def test_no_token_in_debug_logs(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """Even at DEBUG, no log record carries the tokens or the client secret."""
    rsps.add(responses.POST, TOKEN_URL, json=token_body(refresh_token=NEW_REFRESH))
    with caplog.at_level(logging.DEBUG):
        refresh(SETTINGS, OLD_REFRESH)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (OLD_REFRESH, NEW_REFRESH, ACCESS, "client-secret-XYZ"):
        assert secret not in text


def test_settings_repr_hides_the_secret() -> None:
    """OAuthSettings' repr leaves the client secret out."""
    assert "client-secret-XYZ" not in repr(SETTINGS)


def test_loopback_http_authority_is_allowed(
    rsps: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local emulator's http://127.0.0.1 authority works; the token URL uses the tenant."""
    # Registered with monkeypatch so the variable our code sets is undone after the test.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "")
    local = OAuthSettings(
        client_id="c",
        authority="http://127.0.0.1:5001",
        tenant="common",
        redirect_uri="http://127.0.0.1:5000/cb",
    )
    rsps.add(
        responses.POST,
        "http://127.0.0.1:5001/common/oauth2/v2.0/token",
        json=token_body(refresh_token=NEW_REFRESH),
    )
    assert refresh(local, OLD_REFRESH)["access_token"] == ACCESS
    assert "client_secret" not in form(rsps.calls[0].request.body)
