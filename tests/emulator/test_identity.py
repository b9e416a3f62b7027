"""Contract tests for the identity platform: consent page, code redemption, refresh rotation."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from requests_oauthlib import OAuth2Session

from .conftest import ALEX, CLIENT_ID, CLIENT_SECRET, MEGAN, REDIRECT_URI, Env, pkce_pair

pytestmark = pytest.mark.emulator

SCOPES = "offline_access User.Read Files.ReadWrite"


def authorize(
    env: Env, action: str = "accept", account: str = ALEX, email: str = "", **params: str
) -> dict:
    """Walk the consent page; return the query of the redirect back to the app."""
    query = {
        "client_id": CLIENT_ID,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPES,
        "state": "st-123",
        **params,
    }
    url = f"{env.url}/common/oauth2/v2.0/authorize?{urlencode(query)}"
    page = requests.get(url, timeout=5)
    assert page.status_code == 200, page.text
    assert 'name="account"' in page.text and ">Accept<" in page.text and ">Cancel<" in page.text
    request_id = re.search(r'name="request_id" value="([^"]+)"', page.text).group(1)
    resp = requests.post(
        url,
        data={"request_id": request_id, "account": account, "email": email, "action": action},
        allow_redirects=False,
        timeout=5,
    )
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT_URI)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def redeem(env: Env, **fields: str) -> requests.Response:
    body = {
        "grant_type": "authorization_code",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": REDIRECT_URI,
        **fields,
    }
    return requests.post(f"{env.url}/common/oauth2/v2.0/token", data=body, timeout=5)


def refresh(env: Env, token: str) -> requests.Response:
    return requests.post(
        f"{env.url}/consumers/oauth2/v2.0/token",
        timeout=5,
        data={
            "grant_type": "refresh_token",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": token,
        },
    )


def assert_aad_error(resp: requests.Response, error: str, code: int, status: int = 400) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")
    assert {"timestamp", "trace_id", "correlation_id"} <= body.keys()


def test_auth_code_flow_with_pkce_and_token_shape(env: Env) -> None:
    verifier, challenge = pkce_pair()
    back = authorize(env, code_challenge=challenge, code_challenge_method="S256")
    assert back["state"] == "st-123"
    resp = redeem(env, code=back["code"], code_verifier=verifier)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert {"scope", "expires_in", "ext_expires_in", "access_token", "refresh_token"} <= set(body)
    assert "id_token" not in body
    assert "offline_access" not in body["scope"].split()
    me = requests.get(
        f"{env.graph}/me", timeout=5, headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.json()["userPrincipalName"] == ALEX


def test_requests_oauthlib_session_works_unchanged(env: Env, monkeypatch) -> None:
    # The real service drops offline_access from the returned scope; oauthlib needs this flag.
    monkeypatch.setenv("OAUTHLIB_RELAX_TOKEN_SCOPE", "1")
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    oauth = OAuth2Session(CLIENT_ID, redirect_uri=REDIRECT_URI, scope=SCOPES.split(), pkce="S256")
    url, state = oauth.authorization_url(f"{env.url}/common/oauth2/v2.0/authorize")
    page = requests.get(url, timeout=5)
    request_id = re.search(r'name="request_id" value="([^"]+)"', page.text).group(1)
    resp = requests.post(
        url,
        data={"request_id": request_id, "account": MEGAN, "action": "accept"},
        allow_redirects=False,
        timeout=5,
    )
    token = oauth.fetch_token(
        f"{env.url}/common/oauth2/v2.0/token",
        authorization_response=resp.headers["Location"],
        client_secret=CLIENT_SECRET,
        include_client_id=True,
    )
    assert token["access_token"]
    new = oauth.refresh_token(
        f"{env.url}/common/oauth2/v2.0/token", client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    assert new["refresh_token"] != token["refresh_token"]
    drive = oauth.get(f"{env.graph}/me/drive", timeout=5).json()
    assert drive["driveType"] == "business"
    assert state


def test_cancel_redirects_with_access_denied(env: Env) -> None:
    back = authorize(env, action="cancel")
    assert back["error"] == "access_denied"
    assert back["error_description"].startswith("AADSTS65004")
    assert back["state"] == "st-123"


def test_typed_email_creates_account(env: Env) -> None:
    back = authorize(env, account="", email="new.user@example.org")
    assert redeem(env, code=back["code"]).status_code == 200
    assert env.admin.list_items("new.user@example.org") == []


def test_code_is_single_use(env: Env) -> None:
    code = authorize(env)["code"]
    assert redeem(env, code=code).status_code == 200
    assert_aad_error(redeem(env, code=code), "invalid_grant", 54005)


def test_expired_code_refused(env: Env) -> None:
    code = authorize(env)["code"]
    with env.server.state.lock:
        env.server.state.codes[code].expires_at -= timedelta(minutes=11)
    assert_aad_error(redeem(env, code=code), "invalid_grant", 70008)


def test_wrong_pkce_verifier_refused(env: Env) -> None:
    _, challenge = pkce_pair()
    other_verifier, _ = pkce_pair()
    code = authorize(env, code_challenge=challenge, code_challenge_method="S256")["code"]
    assert_aad_error(redeem(env, code=code, code_verifier=other_verifier), "invalid_grant", 501481)
    assert_aad_error(redeem(env, code=code), "invalid_grant", 501481)


def test_plain_verifier_refused_when_s256_asked(env: Env) -> None:
    _, challenge = pkce_pair()
    code = authorize(env, code_challenge=challenge, code_challenge_method="S256")["code"]
    assert_aad_error(redeem(env, code=code, code_verifier=challenge), "invalid_grant", 501481)


def test_wrong_redirect_uri_refused(env: Env) -> None:
    code = authorize(env)["code"]
    resp = redeem(env, code=code, redirect_uri="http://localhost:5000/other")
    assert_aad_error(resp, "invalid_grant", 500112)


def test_client_authentication(env: Env) -> None:
    code = authorize(env)["code"]
    assert_aad_error(redeem(env, code=code, client_secret="nope"), "invalid_client", 7000215, 401)
    resp = requests.post(
        f"{env.url}/common/oauth2/v2.0/token",
        timeout=5,
        auth=(CLIENT_ID, CLIENT_SECRET),
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI},
    )
    assert resp.status_code == 200, resp.text


def test_unknown_client_and_unregistered_redirect_show_error_page(env: Env) -> None:
    base = f"{env.url}/common/oauth2/v2.0/authorize"
    resp = requests.get(
        base,
        params={
            "client_id": "nobody",
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "scope": SCOPES,
        },
        timeout=5,
    )
    assert resp.status_code == 400 and "AADSTS700016" in resp.text
    resp = requests.get(
        base,
        params={
            "client_id": CLIENT_ID,
            "response_type": "code",
            "redirect_uri": "https://evil.example/cb",
            "scope": SCOPES,
        },
        timeout=5,
        allow_redirects=False,
    )
    assert resp.status_code == 400 and "AADSTS50011" in resp.text


def test_refresh_rotates_and_old_token_dies(env: Env) -> None:
    first = redeem(env, code=authorize(env)["code"]).json()
    second = refresh(env, first["refresh_token"])
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert_aad_error(refresh(env, first["refresh_token"]), "invalid_grant", 70000)
    assert refresh(env, second.json()["refresh_token"]).status_code == 200


def test_revoked_consent_gives_invalid_grant_and_401(env: Env) -> None:
    tokens = redeem(env, code=authorize(env)["code"]).json()
    env.admin.revoke_consent(ALEX)
    assert_aad_error(refresh(env, tokens["refresh_token"]), "invalid_grant", 65001)
    resp = requests.get(
        f"{env.graph}/me", timeout=5, headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_id_token_only_with_openid(env: Env) -> None:
    back = authorize(env, scope="openid profile offline_access Files.ReadWrite", nonce="n-1")
    body = redeem(env, code=back["code"]).json()
    header, payload, signature = body["id_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == CLIENT_ID and claims["nonce"] == "n-1"
    assert claims["preferred_username"] == ALEX
    assert signature == ""  # unsigned (alg: none) by design


def test_unsupported_grant_and_missing_fields(env: Env) -> None:
    resp = requests.post(
        f"{env.url}/common/oauth2/v2.0/token",
        timeout=5,
        data={"grant_type": "password", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    )
    assert_aad_error(resp, "unsupported_grant_type", 70003)
    assert_aad_error(redeem(env), "invalid_request", 900144)
