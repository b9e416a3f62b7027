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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Required, TypedDict, cast
from urllib.parse import urlencode, urlsplit

import requests
from requests_oauthlib import OAuth2Session

from drivesync.graph import logsafe
from drivesync.graph.errors import AuthError, GraphError, redact
from drivesync.graph.retry import RETRY_STATUSES, parse_retry_after

logger = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_TENANT = "common"  # work/school and personal Microsoft accounts
DEFAULT_SCOPES = ("offline_access", "User.Read", "Files.ReadWrite")

# Grant errors after which only the user can help: they must sign in again. Without a code that
# TOKEN_PROBLEMS knows, these keep the generic "reconnect" sentence of AuthError.
REAUTH_ERRORS = frozenset(
    {"invalid_grant", "interaction_required", "consent_required", "login_required"}
)
_AADSTS = re.compile(r"AADSTS(\d+)")
_TOKEN_TIMEOUT = (10, 30)
# How long an operator problem (the app's own credentials refused) waits before the next try:
# longer than any pacer's budget, so nothing hammers the token endpoint with a bad secret.
OPERATOR_RETRY_AFTER = 300.0


class Action(StrEnum):
    """Who has to act on a failed token request."""

    RECONNECT = "reconnect"  # the user signs in again (Reconnect)
    ADMIN_CONSENT = "admin_consent"  # an administrator approves the app, then the user reconnects
    OPERATOR = "operator"  # this server's app registration is refused: its operator fixes it
    RETRY = "retry"  # a passing fault of the identity platform: try again later


@dataclass(frozen=True)
class TokenProblem:
    """Why the token endpoint refused, in words for the user and for the operator."""

    reason: str  # stable key, stored and sent with events
    action: Action
    message: str  # for the user; ``{admin_consent_url}`` is filled in from the settings


_EXPIRED = (
    "Your OneDrive connection expired because drivesync had not used it for a long time "
    "(Microsoft ends sign-ins unused for 90 days). Reconnect OneDrive to continue syncing."
)
_ADMIN = (
    "Your organisation's administrator must approve drivesync before it can use your "
    "OneDrive. Send them this link: {admin_consent_url} , then reconnect OneDrive once they "
    "have approved it."
)
_OPERATOR = (
    "OneDrive syncing is paused for everyone by a configuration problem on this server, not "
    "by your account: you do not need to reconnect. Syncing can resume once the server's "
    "operator has fixed it."
)

# The token endpoint's answers by AADSTS code, from "Microsoft Entra authentication and
# authorization error codes": https://learn.microsoft.com/entra/identity-platform/reference-error-codes
# (the page warns that codes may change; an unknown code falls back to the OAuth error).
TOKEN_PROBLEMS: dict[int, TokenProblem] = {
    # ExpiredOrRevokedGrantInactiveToken: the refresh token was unused for too long (90 days).
    700082: TokenProblem("refresh_token_inactive", Action.RECONNECT, _EXPIRED),
    # ExpiredOrRevokedGrant: the refresh token expired due to inactivity.
    70008: TokenProblem("refresh_token_inactive", Action.RECONNECT, _EXPIRED),
    # FreshTokenNeeded: the grant was revoked, e.g. after a password change or reset.
    50173: TokenProblem(
        "grant_revoked",
        Action.RECONNECT,
        "Microsoft withdrew drivesync's access to your OneDrive, for example because your "
        "password was changed. Reconnect OneDrive to continue syncing.",
    ),
    # BadTokenDueToSignInFrequency: Conditional Access asks for a fresh sign-in regularly.
    70043: TokenProblem(
        "sign_in_frequency",
        Action.RECONNECT,
        "Your organisation requires you to sign in to Microsoft again from time to time. "
        "Reconnect OneDrive to continue syncing.",
    ),
    # UserStrongAuthRequired: multi-factor authentication is now required.
    50076: TokenProblem(
        "mfa_required",
        Action.RECONNECT,
        "Your Microsoft account now needs multi-factor authentication. Reconnect OneDrive and "
        "complete Microsoft's extra sign-in step.",
    ),
    # UserStrongAuthEnrollmentRequired: the user must first register for MFA.
    50079: TokenProblem(
        "mfa_enrollment_required",
        Action.RECONNECT,
        "Your organisation requires you to set up multi-factor authentication. Reconnect "
        "OneDrive and follow Microsoft's set-up steps.",
    ),
    # DelegationDoesNotExist: the user (or admin) has not consented, or consent was withdrawn.
    65001: TokenProblem(
        "consent_missing",
        Action.RECONNECT,
        "drivesync no longer has your permission to use OneDrive. Reconnect OneDrive and "
        "accept the permissions it asks for.",
    ),
    # AdminConsentRequired: only an administrator can grant what the app asks for.
    90094: TokenProblem("admin_consent_required", Action.ADMIN_CONSENT, _ADMIN),
    # TokenForItselfRequiresGraphPermission: the tenant has not consented to the app.
    90008: TokenProblem("admin_consent_required", Action.ADMIN_CONSENT, _ADMIN),
    # InvalidClientSecretExpiredKeysProvided: the app's client secret has expired.
    7000222: TokenProblem("client_secret_expired", Action.OPERATOR, _OPERATOR),
    # InvalidClientSecretProvided: the client secret is wrong (often the secret's id, not value).
    7000215: TokenProblem("client_secret_invalid", Action.OPERATOR, _OPERATOR),
}
# invalid_client with another code (no secret sent, app deleted...) is still the operator's.
CLIENT_REJECTED = TokenProblem("client_rejected", Action.OPERATOR, _OPERATOR)
IDENTITY_UNAVAILABLE = TokenProblem(
    "identity_unavailable",
    Action.RETRY,
    "Microsoft's sign-in service is busy or unavailable; syncing will try again later.",
)
# What the operator must do, for the ERROR log line (never the secret itself).
OPERATOR_ACTIONS: dict[str, str] = {
    "client_secret_expired": "the app's client secret has expired: create a new secret in the "
    "app registration and set DRIVESYNC_MS_CLIENT_SECRET to its value",
    "client_secret_invalid": "the app's client secret is wrong: set DRIVESYNC_MS_CLIENT_SECRET "
    "to the secret's value (not its id) from the app registration",
    "client_rejected": "Microsoft refused this server's app credentials: check "
    "DRIVESYNC_MS_CLIENT_ID and DRIVESYNC_MS_CLIENT_SECRET against the app registration",
}


def classify(status: int, error: str, codes: Sequence[int]) -> TokenProblem | None:
    """Return what a failed token response means, or ``None`` when no rule knows it.

    The AADSTS code decides first; then the OAuth error (RFC 6749 section 5.2) and the status.
    """
    for code in codes:
        if code in TOKEN_PROBLEMS:
            return TOKEN_PROBLEMS[code]
    if error == "invalid_client":
        return CLIENT_REJECTED
    if error == "temporarily_unavailable" or status in RETRY_STATUSES:
        return IDENTITY_UNAVAILABLE
    return None


class SignInError(AuthError):
    """The user, or their administrator, must act before the grant works again: Reconnect."""

    def __init__(
        self, message: str, *, problem: TokenProblem, user_message: str, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.problem = problem
        self.user_message = user_message

    def human_message(self) -> str:
        """Return the sentence for this reason (it may carry the admin-consent link)."""
        return self.user_message


class AppCredentialsError(GraphError):
    """Microsoft refused this server's own app credentials: an outage only the operator ends.

    Users are not asked to reconnect. It keeps Microsoft's status (401) but is retryable, as an
    outage is, with a ``retry_after`` that outlasts a pacer's budget: the request gives up at
    once and later attempts are spaced out instead of hammering the token endpoint.
    """

    def __init__(self, message: str, *, problem: TokenProblem, **kwargs: Any) -> None:
        kwargs.setdefault("retryable", True)
        kwargs.setdefault("retry_after", OPERATOR_RETRY_AFTER)
        super().__init__(message, **kwargs)
        self.problem = problem

    @property
    def operator_action(self) -> str:
        """Return what the operator must do (no secret in it)."""
        return OPERATOR_ACTIONS[self.problem.reason]

    def human_message(self) -> str:
        """Return the sentence for users: a server-side outage, not their account."""
        return self.problem.message


logsafe.install()


class TokenResponse(TypedDict, total=False):
    """A token response (v2-oauth2-auth-code-flow, "Successful response"), plus ``expires_at``."""

    token_type: str  # always "Bearer"
    # Granted scopes, space-separated, without offline_access; oauthlib may hand back a list.
    scope: str | list[str]
    expires_in: int  # seconds
    ext_expires_in: int
    expires_at: float  # added here: absolute Unix time, from expires_in
    access_token: Required[str]
    refresh_token: str  # only with offline_access; rotation is optional (see refresh())
    id_token: str  # only with openid


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

    @property
    def admin_consent_url(self) -> str:
        """Return the link an administrator opens to approve the app for their organisation.

        https://learn.microsoft.com/entra/identity-platform/v2-admin-consent : personal accounts
        cannot consent for an organisation, so the multi-tenant ``common`` becomes
        ``organizations``; a configured tenant is used as it is.
        """
        tenant = "organizations" if self.tenant in ("common", "consumers") else self.tenant
        query = urlencode({"client_id": self.client_id})
        return f"{self.authority.rstrip('/')}/{tenant}/adminconsent?{query}"


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


def _session(
    settings: OAuthSettings, session: requests.Session | None, *, scope: bool
) -> OAuth2Session:
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
) -> TokenResponse:
    """Redeem an authorization code; return the token dict with an absolute ``expires_at``."""
    oauth = _session(settings, session, scope=False)
    _hook_errors(oauth, "access_token_response", settings, secrets=(code, code_verifier))
    extra: dict[str, Any] = {"include_client_id": True, "code_verifier": code_verifier}
    if settings.client_secret:
        extra["client_secret"] = settings.client_secret
    token = _call(
        settings,
        lambda: oauth.fetch_token(
            settings.token_endpoint, code=code, timeout=_TOKEN_TIMEOUT, **extra
        ),
    )
    return token


def refresh(
    settings: OAuthSettings,
    refresh_token: str,
    session: requests.Session | None = None,
) -> TokenResponse:
    """Redeem a refresh token; return the new token dict (old refresh token kept if none came).

    Raise ``AuthError`` when the user must reconnect (``SignInError`` with the reason when the
    AADSTS code is known), ``AppCredentialsError`` when Microsoft refuses the app itself, and a
    retryable ``GraphError`` for 429/5xx/``temporarily_unavailable``. One request, no retry:
    the caller holds the refresh lock and owns the pacing.
    """
    oauth = _session(settings, session, scope=False)
    _hook_errors(oauth, "refresh_token_response", settings, secrets=(refresh_token,))
    body: dict[str, Any] = {"client_id": settings.client_id}
    if settings.client_secret:
        body["client_secret"] = settings.client_secret
    token = _call(
        settings,
        lambda: oauth.refresh_token(
            settings.token_endpoint,
            refresh_token=refresh_token,
            timeout=_TOKEN_TIMEOUT,
            **body,
        ),
    )
    if not token.get("refresh_token"):
        # Rotation is optional: the identity platform may or may not return a new one.
        token["refresh_token"] = refresh_token
    return token


def _call(settings: OAuthSettings, fn: Callable[[], Mapping[str, Any]]) -> TokenResponse:
    """Run one token request; return the token with an absolute ``expires_at``."""
    try:
        # oauthlib returns an untyped dict; it has checked that access_token is present.
        token = cast(TokenResponse, dict(fn()))
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
        raise _token_error(settings, 400, str(error), str(description), None, ()) from None
    if "expires_at" not in token:
        expires_in = token.get("expires_in")
        if expires_in is not None:
            token["expires_at"] = time.time() + float(expires_in)
    return token


def _hook_errors(
    oauth: OAuth2Session, hook: str, settings: OAuthSettings, secrets: tuple[str | None, ...]
) -> None:
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
        raise _token_error(
            settings, resp.status_code, error, description, retry_after, secrets, codes
        )

    oauth.register_compliance_hook(hook, check)


def _aadsts_codes(description: str, codes: object) -> list[int]:
    """Return the AADSTS codes of an answer: ``error_codes`` first, then the description's."""
    found = [c for c in codes if isinstance(c, int)] if isinstance(codes, list) else []
    found += [int(m) for m in _AADSTS.findall(description) if int(m) not in found]
    return found


def _token_error(
    settings: OAuthSettings,
    status: int,
    error: str,
    description: str,
    retry_after: float | None,
    secrets: tuple[str | None, ...],
    codes: object = None,
) -> GraphError:
    aadsts = _aadsts_codes(description, codes)
    inner = f"AADSTS{aadsts[0]}" if aadsts else None
    # Keep the first line only: the rest is trace and correlation ids and a timestamp.
    first_line = description.strip().splitlines()[0] if description.strip() else ""
    message = redact(first_line, *secrets)
    problem = classify(status, error, aadsts)
    kwargs: dict[str, Any] = {
        "status": status,
        "code": error or f"http{status}",
        "inner_code": inner,
    }
    if problem is None:
        if error in REAUTH_ERRORS:
            return AuthError(message, **kwargs)  # today's generic "reconnect"
        return GraphError(message, retry_after=retry_after, **kwargs)
    if problem.action is Action.OPERATOR:
        return AppCredentialsError(message, problem=problem, **kwargs)
    if problem.action is Action.RETRY:
        return GraphError(message, retry_after=retry_after, retryable=True, **kwargs)
    user_message = problem.message.format(admin_consent_url=settings.admin_consent_url)
    return SignInError(message, problem=problem, user_message=user_message, **kwargs)
