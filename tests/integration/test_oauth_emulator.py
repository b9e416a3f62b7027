"""drivesync.graph.oauth against the emulator's identity platform, consent page included."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from drivesync.graph import oauth
from drivesync.graph.client import GraphClient
from drivesync.graph.errors import AuthError, GraphError
from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.fixtures_emulator import EmulatorCA, new_emulator

pytestmark = pytest.mark.emulator

CLIENT_ID = "9a8b7c6d-1111-4222-8333-abcdefabcdef"
CLIENT_SECRET = "oauth-integration-secret"
REDIRECT_URI = "http://localhost:5000/onedrive/callback"
ALEX = "alex@contoso.example"
MEGAN = "megan@fabrikam.example"


@dataclass
class Identity:
    """The emulator, its admin client, an HTTP session and the app's OAuth settings."""

    server: EmulatorServer
    admin: EmulatorAdmin
    http: requests.Session
    settings: oauth.OAuthSettings

    def consent(self, email: str = ALEX, action: str = "accept") -> tuple[dict[str, str], str]:
        """Run authorization_url and the consent form; return the redirect's query and verifier."""
        url, state, verifier = oauth.authorization_url(self.settings)
        page = self.http.get(url, timeout=5)
        assert page.status_code == 200, page.text
        match = re.search(r'name="request_id" value="([^"]+)"', page.text)
        assert match, "the consent page has no request_id"
        answer = self.http.post(
            self.settings.authorize_endpoint,
            data={"request_id": match.group(1), "account": email, "action": action},
            allow_redirects=False,
            timeout=5,
        )
        assert answer.status_code == 302, answer.text
        location = answer.headers["Location"]
        assert location.startswith(REDIRECT_URI + "?")
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        assert query.get("state") == state
        return query, verifier

    def sign_in(self, email: str = ALEX) -> tuple[dict[str, Any], str, str]:
        """Consent and redeem the code; return (tokens, code, verifier)."""
        query, verifier = self.consent(email)
        tokens = oauth.exchange_code(self.settings, query["code"], verifier, session=self.http)
        return tokens, query["code"], verifier

    def me(self, access_token: str) -> dict[str, Any]:
        """Return /me through GraphClient with ``access_token``."""
        client = GraphClient(lambda _force: access_token, base_url=f"{self.server.url}/v1.0")
        try:
            return dict(client.me())
        finally:
            client.close()


def assert_secret_free(exc: BaseException, *secrets: str) -> None:
    """Assert no secret appears in the exception's text, repr, args or attributes."""
    texts = [str(exc), repr(exc), *map(str, exc.args)]
    texts += [str(v) for v in vars(exc).values()]
    if isinstance(exc, GraphError):
        texts.append(exc.human_message())
    for secret in secrets:
        assert secret and len(secret) >= 8
        for text in texts:
            assert secret not in text, f"secret leaked into {type(exc).__name__}: {text!r}"


@pytest.fixture(scope="module")
def server(emulator_ca: EmulatorCA | None) -> Iterator[EmulatorServer]:
    """One emulator for this module (HTTPS, the session's CA), with the app registered."""
    with new_emulator(emulator_ca, clients=[(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])]) as srv:
        yield srv


@pytest.fixture
def idp(server: EmulatorServer) -> Iterator[Identity]:
    """A freshly reset emulator and the settings pointing at it."""
    admin = EmulatorAdmin(server.url)
    admin.reset()
    http = requests.Session()
    settings = oauth.OAuthSettings(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority=server.url,
        redirect_uri=REDIRECT_URI,
    )
    yield Identity(server, admin, http, settings)
    http.close()
    admin.close()


def test_consent_and_code_exchange_give_working_tokens(idp: Identity) -> None:
    """authorization_url, consent and exchange_code yield tokens that Graph accepts."""
    tokens, code, _verifier = idp.sign_in(MEGAN)
    assert code.startswith("M.C")
    assert tokens["token_type"] == "Bearer"
    assert tokens["access_token"] and tokens["refresh_token"]
    assert tokens["expires_at"] > tokens.get("expires_in", 0)
    assert "offline_access" not in str(tokens.get("scope", ""))
    assert idp.me(tokens["access_token"])["mail"] == MEGAN


def test_sign_in_needs_no_insecure_transport_over_https(
    idp: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTPS the whole sign-in and refresh run with oauthlib's insecure-transport flag off."""
    if not idp.settings.authority.startswith("https://"):
        pytest.skip("DRIVESYNC_TEST_EMULATOR_TLS=0: the emulator serves plain HTTP")
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    tokens, _code, _verifier = idp.sign_in(ALEX)
    again = oauth.refresh(idp.settings, tokens["refresh_token"], idp.http)
    assert idp.me(again["access_token"])["mail"] == ALEX
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in os.environ


def test_declined_consent_redirects_with_access_denied(idp: Identity) -> None:
    """Cancelling on the consent page sends the user back with error=access_denied and no code."""
    query, _verifier = idp.consent(action="cancel")
    assert query["error"] == "access_denied" and "code" not in query


def test_reused_code_is_refused(idp: Identity) -> None:
    """A code redeemed once raises AuthError (invalid_grant, AADSTS54005) the second time."""
    _tokens, code, verifier = idp.sign_in()
    with pytest.raises(AuthError) as info:
        oauth.exchange_code(idp.settings, code, verifier, session=idp.http)
    assert info.value.code == "invalid_grant"
    assert info.value.inner_code == "AADSTS54005"
    assert_secret_free(info.value, code, verifier, CLIENT_SECRET)


def test_wrong_verifier_is_refused(idp: Identity) -> None:
    """A code redeemed with another PKCE verifier raises AuthError (AADSTS501481)."""
    query, verifier = idp.consent()
    wrong = oauth.new_code_verifier()
    with pytest.raises(AuthError) as info:
        oauth.exchange_code(idp.settings, query["code"], wrong, session=idp.http)
    assert info.value.code == "invalid_grant"
    assert info.value.inner_code == "AADSTS501481"
    assert_secret_free(info.value, query["code"], wrong, verifier, CLIENT_SECRET)


def test_wrong_client_secret_is_not_a_reauth_error(idp: Identity) -> None:
    """A bad client secret raises a plain GraphError (invalid_client) naming no secret."""
    query, verifier = idp.consent()
    bad = oauth.OAuthSettings(
        client_id=CLIENT_ID,
        client_secret="not-the-right-secret",
        authority=idp.server.url,
        redirect_uri=REDIRECT_URI,
    )
    with pytest.raises(GraphError) as info:
        oauth.exchange_code(bad, query["code"], verifier, session=idp.http)
    assert not isinstance(info.value, AuthError)
    assert info.value.status == 401 and info.value.code == "invalid_client"
    assert_secret_free(info.value, "not-the-right-secret", CLIENT_SECRET, query["code"], verifier)


def test_refresh_rotates_the_refresh_token(idp: Identity) -> None:
    """refresh returns new tokens; the old refresh token is then refused, the new one works."""
    tokens, _code, _verifier = idp.sign_in()
    old = tokens["refresh_token"]
    new = oauth.refresh(idp.settings, old, session=idp.http)
    assert new["refresh_token"] != old
    assert new["access_token"] != tokens["access_token"]
    assert idp.me(new["access_token"])["mail"] == ALEX
    with pytest.raises(AuthError) as info:
        oauth.refresh(idp.settings, old, session=idp.http)
    assert info.value.code == "invalid_grant"
    assert_secret_free(info.value, old, new["refresh_token"], CLIENT_SECRET)
    again = oauth.refresh(idp.settings, new["refresh_token"], session=idp.http)
    assert again["refresh_token"] not in (old, new["refresh_token"])


def test_revoked_consent_makes_refresh_raise_auth_error(idp: Identity) -> None:
    """After consent is withdrawn, refresh raises AuthError and Graph refuses the access token."""
    tokens, _code, _verifier = idp.sign_in()
    idp.admin.revoke_consent(ALEX)
    with pytest.raises(AuthError) as info:
        oauth.refresh(idp.settings, tokens["refresh_token"], session=idp.http)
    err = info.value
    assert err.code == "invalid_grant" and err.inner_code == "AADSTS65001" and not err.retryable
    assert "Reconnect OneDrive" in err.human_message()
    assert_secret_free(err, tokens["refresh_token"], tokens["access_token"], CLIENT_SECRET)
    with pytest.raises(GraphError) as graph_info:
        idp.me(tokens["access_token"])
    assert graph_info.value.status == 401
    assert_secret_free(graph_info.value, tokens["access_token"], tokens["refresh_token"])
