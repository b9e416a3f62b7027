"""Microsoft identity platform v2.0: authorization URL (state + PKCE), code exchange, refresh.

Protocol: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow
Built on requests-oauthlib's ``OAuth2Session``; everything here is plain data in, plain data out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests_oauthlib import OAuth2Session

from drivesync.graph import logsafe
from drivesync.graph.errors import AuthError, GraphError, redact
from drivesync.graph.retry import parse_retry_after

logger = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_TENANT = "common"  # work/school and personal Microsoft accounts
DEFAULT_SCOPES = ("offline_access", "User.Read", "Files.ReadWrite")

# Grant errors after which only the user can help: they must sign in again.
# invalid_grant covers expired (AADSTS70008/700082), revoked (AADSTS50173) and withdrawn consent.
REAUTH_ERRORS = frozenset(
    {"invalid_grant", "interaction_required", "consent_required", "login_required"}
)
_AADSTS = re.compile(r"AADSTS\d+")
_TOKEN_TIMEOUT = (10, 30)


logsafe.install()


@dataclass(frozen=True)
class OAuthSettings:
    """Where and as whom to sign in. ``client_secret`` may be empty for a public client."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    tenant: str = DEFAULT_TENANT
    authority: str = DEFAULT_AUTHORITY
    scopes: list[str] = field(default_factory=lambda: list(DEFAULT_SCOPES))
    redirect_uri: str = ""

    @property
    def authorize_endpoint(self) -> str:
        """Return ``{authority}/{tenant}/oauth2/v2.0/authorize``."""
        return f"{self.authority.rstrip('/')}/{self.tenant}/oauth2/v2.0/authorize"

    @property
    def token_endpoint(self) -> str:
        """Return ``{authority}/{tenant}/oauth2/v2.0/token``."""
        return f"{self.authority.rstrip('/')}/{self.tenant}/oauth2/v2.0/token"


def new_code_verifier() -> str:
    """Return a PKCE code verifier: 64 URL-safe characters (RFC 7636 allows 43 to 128)."""
    return secrets.token_urlsafe(48)


def code_challenge(verifier: str) -> str:
    """Return the S256 challenge for ``verifier`` (base64url of SHA-256, no padding)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _allow_loopback_http(url: str) -> None:
    """Let oauthlib talk plain HTTP to a loopback authority (the local emulator) only.

    oauthlib refuses non-HTTPS token URLs unless OAUTHLIB_INSECURE_TRANSPORT is set; RFC 8252
    section 8.3 accepts loopback. Production configuration refuses an http authority anyway.
    """
    parts = urlsplit(url)
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        if not os.environ.get("OAUTHLIB_INSECURE_TRANSPORT"):
            logger.warning("Allowing plain HTTP to the loopback identity endpoint %s", parts.netloc)
            os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"


def _session(settings: OAuthSettings, session: requests.Session | None, *, scope: bool) -> Any:
    _allow_loopback_http(settings.authority)
    oauth = OAuth2Session(
        client_id=settings.client_id,
        # Microsoft's token response omits offline_access from "scope", which oauthlib would
        # raise as a scope change; the token calls therefore send no scope (it is optional).
        scope=list(settings.scopes) if scope else None,
        redirect_uri=settings.redirect_uri or None,
    )
    if session is not None:
        # Reuse the caller's transport (adapters, proxies; `responses` in tests).
        oauth.mount("https://", session.get_adapter("https://"))
        oauth.mount("http://", session.get_adapter("http://"))
        oauth.trust_env = session.trust_env
    return oauth


def authorization_url(settings: OAuthSettings) -> tuple[str, str, str]:
    """Return ``(url, state, code_verifier)``: sign-in with state, PKCE S256 and account picker.

    Keep ``state`` and ``code_verifier`` in the server-side session; both are single-use.
    """
    state = secrets.token_urlsafe(32)
    verifier = new_code_verifier()
    oauth = _session(settings, None, scope=True)
    url, state = oauth.authorization_url(
        settings.authorize_endpoint,
        state=state,
        code_challenge=code_challenge(verifier),
        code_challenge_method="S256",
        prompt="select_account",
        response_mode="query",
    )
    return url, state, verifier


def exchange_code(
    settings: OAuthSettings,
    code: str,
    code_verifier: str,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """Redeem an authorization code; return the token dict with an absolute ``expires_at``."""
    oauth = _session(settings, session, scope=False)
    _hook_errors(oauth, "access_token_response", secrets=(code, code_verifier))
    extra: dict[str, Any] = {"include_client_id": True, "code_verifier": code_verifier}
    if settings.client_secret:
        extra["client_secret"] = settings.client_secret
    token = _call(
        lambda: oauth.fetch_token(
            settings.token_endpoint, code=code, timeout=_TOKEN_TIMEOUT, **extra
        )
    )
    return _normalise(token)


def refresh(
    settings: OAuthSettings,
    refresh_token: str,
    session: requests.Session | None = None,
) -> dict[str, Any]:
    """Redeem a refresh token; return the new token dict (old refresh token kept if none came).

    Raise ``AuthError`` when the user must reconnect (``invalid_grant`` and friends), and a
    retryable ``GraphError`` for 429/5xx from the token endpoint.
    """
    oauth = _session(settings, session, scope=False)
    _hook_errors(oauth, "refresh_token_response", secrets=(refresh_token,))
    body: dict[str, Any] = {"client_id": settings.client_id}
    if settings.client_secret:
        body["client_secret"] = settings.client_secret
    token = _call(
        lambda: oauth.refresh_token(
            settings.token_endpoint,
            refresh_token=refresh_token,
            timeout=_TOKEN_TIMEOUT,
            **body,
        )
    )
    token = _normalise(token)
    if not token.get("refresh_token"):
        # Rotation is optional: the identity platform may or may not return a new one.
        token["refresh_token"] = refresh_token
    return token


def _normalise(token: Any) -> dict[str, Any]:
    token = dict(token)
    if "expires_at" not in token:
        expires_in = token.get("expires_in")
        if expires_in is not None:
            token["expires_at"] = time.time() + float(expires_in)
    return token


def _call(fn: Any) -> Any:
    try:
        return fn()
    except GraphError:
        raise
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise GraphError(
            f"{type(exc).__name__} while talking to the identity platform",
            code="networkError",
            retryable=True,
        ) from None
    except Exception as exc:  # oauthlib errors and its scope/format warnings
        error = getattr(exc, "error", None) or type(exc).__name__
        description = getattr(exc, "description", None) or ""
        raise _token_error(400, str(error), str(description), None, ()) from None


def _hook_errors(oauth: Any, hook: str, secrets: tuple[str | None, ...]) -> None:
    """Turn every non-2xx token response into our errors before oauthlib parses it."""

    def check(resp: requests.Response) -> requests.Response:
        if resp.status_code < 400:
            return resp
        error, description, codes = "", "", None
        try:
            body = resp.json()
        except (ValueError, json.JSONDecodeError):
            body = None
        if isinstance(body, dict):
            error = str(body.get("error") or "")
            description = str(body.get("error_description") or "")
            codes = body.get("error_codes")
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise _token_error(resp.status_code, error, description, retry_after, secrets, codes)

    oauth.register_compliance_hook(hook, check)


def _token_error(
    status: int,
    error: str,
    description: str,
    retry_after: float | None,
    secrets: tuple[str | None, ...],
    codes: Any = None,
) -> GraphError:
    aadsts = _AADSTS.search(description)
    inner = aadsts.group(0) if aadsts else None
    if inner is None and isinstance(codes, list) and codes:
        inner = f"AADSTS{codes[0]}"
    # Keep the first line only: the rest is trace and correlation ids and a timestamp.
    first_line = description.strip().splitlines()[0] if description.strip() else ""
    message = redact(first_line, *secrets)
    if error in REAUTH_ERRORS:
        return AuthError(message, status=status, code=error, inner_code=inner)
    return GraphError(
        message,
        status=status,
        code=error or f"http{status}",
        inner_code=inner,
        retry_after=retry_after,
    )
