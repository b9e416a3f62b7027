"""Microsoft identity platform v2.0: ``/{tenant}/oauth2/v2.0/authorize`` and ``/token``.

Behaviour from https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow :
codes live about 10 minutes and are single use (AADSTS54005 on reuse), ``redirect_uri`` must be
the one used at /authorize (AADSTS500112), PKCE (RFC 7636) is verified when a challenge was sent
(AADSTS501481), client secrets go in the body or in HTTP Basic (RFC 6749 §2.3.1).

Refresh tokens: the platform "may issue a new refresh token"; the page says old refresh tokens
are not revoked on use but clients are "expected to discard the old refresh token". This
emulator is stricter on purpose and invalidates the old one, so a client that forgets to persist
the rotated token fails here first.

``id_token`` (only with ``openid``) is a well-formed but *unsigned* JWT (``alg: none``); the real
service signs it with RS256.

Token-endpoint faults (admin API, JSON, development and tests only):

=============================================  =================================================
``POST   /_emulator/faults/token-error``       answer the token endpoint with an error:
                                               ``aadsts`` (e.g. 700082) and/or ``error``
                                               (default from the code, e.g. invalid_grant),
                                               ``status`` (default 400, 401 for invalid_client),
                                               ``count`` (next N matching requests; null = until
                                               cleared), ``retry_after`` (seconds), and whom it
                                               hits: ``client_id``, ``refresh_token``, ``email``
                                               (the account a refresh token belongs to)
``DELETE /_emulator/faults/token-error``       clear them (so do ``DELETE /_emulator/faults``
                                               and ``POST /_emulator/reset``)
=============================================  =================================================

The body has Microsoft's shape (``error``, ``error_description`` starting ``AADSTSnnnnn:``,
``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``), with the description text
of https://learn.microsoft.com/entra/identity-platform/reference-error-codes for known codes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from flask import Blueprint, Response, current_app, jsonify, redirect, request

from .responses import identity_error
from .state import CODE_LIFETIME, AuthCode, EmulatorState, PendingAuthorize, new_secret, utcnow

bp = Blueprint("emulator_identity", __name__)

_TENANT = r"[A-Za-z0-9.\-]+"
_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


def get_state() -> EmulatorState:
    """Return the emulator state bound to the current app."""
    return current_app.extensions["drivesync_emulator"]


# -- token-endpoint faults -----------------------------------------------------------------------

# code -> (OAuth error, description), after Microsoft's texts for these codes.
TOKEN_ERROR_TEXTS: dict[int, tuple[str, str]] = {
    700082: (
        "invalid_grant",
        "The refresh token has expired due to inactivity. The token was issued on "
        "2026-01-01T00:00:00.0000000Z and was inactive for 90.00:00:00.",
    ),
    70008: (
        "invalid_grant",
        "The provided authorization code or refresh token has expired due to inactivity. "
        "Send a new interactive authorization request for this user and resource.",
    ),
    50173: (
        "invalid_grant",
        "The provided grant has expired due to it being revoked, a fresh auth token is needed. "
        "The user might have changed or reset their password.",
    ),
    70043: (
        "invalid_grant",
        "The refresh token has expired or is invalid due to sign-in frequency checks by "
        "conditional access.",
    ),
    50076: (
        "invalid_grant",
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must use multi-factor authentication to access this resource.",
    ),
    50079: (
        "invalid_grant",
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must enroll in multi-factor authentication to access this resource.",
    ),
    65001: (
        "invalid_grant",
        "The user or administrator has not consented to use the application. Send an "
        "interactive authorization request for this user and resource.",
    ),
    90094: ("invalid_grant", "The grant requires admin permission."),
    90008: (
        "invalid_grant",
        "The user or administrator has not consented to use the application. This happened "
        "because the application is misconfigured: it must require access to the directory by "
        "specifying at least 'Sign in and read user profile' permission.",
    ),
    7000222: (
        "invalid_client",
        "The provided client secret keys for app are expired. Visit the Azure portal to create "
        "new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate "
        "credentials for added security: https://aka.ms/certCreds.",
    ),
    7000215: (
        "invalid_client",
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to the app.",
    ),
    90033: ("temporarily_unavailable", "A transient error has occurred. Please try again."),
}
_FAULTS_EXTENSION = "drivesync_emulator_token_faults"


@dataclass
class TokenFault:
    """One injected token-endpoint error and the requests it hits."""

    status: int
    error: str
    aadsts: int
    description: str
    count: int | None  # None: until cleared
    retry_after: int | None = None
    client_id: str | None = None
    refresh_token: str | None = None
    email: str | None = None

    def hits(self, client_id: str, refresh_token: str | None, email: str | None) -> bool:
        """Return whether this fault applies to the request."""
        return (
            (self.client_id is None or self.client_id == client_id)
            and (self.refresh_token is None or self.refresh_token == refresh_token)
            and (self.email is None or (email or "").casefold() == self.email.casefold())
        )


def _token_faults() -> list[TokenFault]:
    faults: list[TokenFault] = current_app.extensions.setdefault(_FAULTS_EXTENSION, [])
    return faults


def _injected_token_error(state: EmulatorState, client_id: str) -> Response | None:
    """Consume and answer the first injected fault that hits this token request, if any."""
    refresh_token = request.form.get("refresh_token")
    with state.lock:
        faults = _token_faults()
        if not faults:
            return None
        known = state.refresh_tokens.get(refresh_token or "")
        email = known.email if known else None
        fault = next((f for f in faults if f.hits(client_id, refresh_token, email)), None)
        if fault is None:
            return None
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                faults.remove(fault)
    resp = identity_error(fault.status, fault.error, fault.aadsts, fault.description)
    if fault.retry_after is not None:
        resp.headers["Retry-After"] = str(fault.retry_after)
    return resp


@bp.route("/_emulator/faults/token-error", methods=["POST"])
def add_token_error() -> Response:
    """Make the token endpoint answer an AADSTS error (see the module docstring)."""
    data: dict[str, Any] = request.get_json(silent=True) or {}
    # Without a code: AADSTS90033, temporarily_unavailable (give "status": 503 for a burst).
    aadsts = int(data.get("aadsts") or 90033)
    known_error, description = TOKEN_ERROR_TEXTS.get(aadsts, ("", ""))
    error = str(data.get("error") or known_error)
    if not error:
        resp = jsonify({"error": f"AADSTS{aadsts} is not known here: give its OAuth error"})
        resp.status_code = 400
        return resp
    default_status = 401 if error == "invalid_client" else 400
    fault = TokenFault(
        status=int(data.get("status") or default_status),
        error=error,
        aadsts=aadsts,
        description=str(data.get("description") or description or "Injected by the emulator."),
        count=None if data.get("count") is None else int(data["count"]),
        retry_after=None if data.get("retry_after") is None else int(data["retry_after"]),
        client_id=data.get("client_id"),
        refresh_token=data.get("refresh_token"),
        email=data.get("email"),
    )
    with get_state().lock:
        _token_faults().append(fault)
    return jsonify({"ok": True, "status": fault.status, "error": fault.error})


@bp.route("/_emulator/faults/token-error", methods=["DELETE"])
def clear_token_errors() -> Response:
    """Stop injecting token-endpoint errors."""
    with get_state().lock:
        _token_faults().clear()
    return jsonify({"ok": True})


@bp.before_app_request
def _clear_with_the_other_faults() -> None:
    # The admin API's "clear all faults" and "reset" (admin.py) clear these too.
    if (request.method, request.path.rstrip("/")) in (
        ("DELETE", "/_emulator/faults"),
        ("POST", "/_emulator/reset"),
    ):
        with get_state().lock:
            _token_faults().clear()


def _error_page(status: int, aadsts: int, message: str) -> Response:
    body = (
        "<!doctype html><title>Sign in error</title><h1>Sorry, but we're having trouble "
        f"signing you in.</h1><p>AADSTS{aadsts}: {html.escape(message)}</p>"
    )
    return Response(body, status=status, content_type="text/html; charset=utf-8")


def _redirect_with(redirect_uri: str, params: dict[str, str | None]) -> Response:
    parts = urlsplit(redirect_uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return redirect(urlunsplit(parts._replace(query=query)), code=302)


def _form_post(redirect_uri: str, params: dict[str, str | None]) -> Response:
    fields = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in params.items()
        if v is not None
    )
    body = (
        '<!doctype html><body onload="document.forms[0].submit()">'
        f'<form method="post" action="{html.escape(redirect_uri)}">{fields}'
        "<noscript><button>Continue</button></noscript></form></body>"
    )
    return Response(body, content_type="text/html; charset=utf-8")


def _answer(pending: PendingAuthorize, params: dict[str, str | None]) -> Response:
    if pending.response_mode == "form_post":
        return _form_post(pending.redirect_uri, params)
    return _redirect_with(pending.redirect_uri, params)


@bp.route("/<tenant>/oauth2/v2.0/authorize", methods=["GET"])
def authorize(tenant: str) -> Response:
    """Validate the authorization request and show the consent page."""
    state = get_state()
    args = request.args
    if not re.fullmatch(_TENANT, tenant):
        return _error_page(400, 90002, f"Tenant '{tenant}' not found.")
    client_id = args.get("client_id", "")
    client = state.clients.get(client_id)
    if client is None:
        return _error_page(
            400,
            700016,
            f"Application with identifier '{client_id}' was not found in the directory.",
        )
    redirect_uri = args.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        return _error_page(
            400,
            50011,
            f"The redirect URI '{redirect_uri}' specified in the request does not "
            f"match the redirect URIs configured for the application '{client_id}'.",
        )
    response_mode = args.get("response_mode", "query")
    pending = PendingAuthorize(
        id=new_secret(16),
        client_id=client_id,
        redirect_uri=redirect_uri,
        scopes=args.get("scope", "").split(),
        state=args.get("state"),
        code_challenge=args.get("code_challenge"),
        code_challenge_method=args.get("code_challenge_method"),
        nonce=args.get("nonce"),
        response_mode=response_mode if response_mode in ("query", "form_post") else "query",
        login_hint=args.get("login_hint"),
    )
    problem = _authorize_problem(pending, args.get("response_type", ""))
    if problem:
        return _answer(
            pending, {"error": problem[0], "error_description": problem[1], "state": pending.state}
        )
    if pending.code_challenge and not pending.code_challenge_method:
        pending.code_challenge_method = "plain"  # RFC 7636 §4.3 default
    with state.lock:
        state.pending[pending.id] = pending
    return Response(
        _consent_page(state, pending, client.app_name), content_type="text/html; charset=utf-8"
    )


def _authorize_problem(pending: PendingAuthorize, response_type: str) -> tuple[str, str] | None:
    if response_type != "code":
        return (
            "unsupported_response_type",
            "AADSTS700054: response_type must be 'code' in this emulator.",
        )
    if not pending.scopes:
        return (
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'scope'.",
        )
    method = pending.code_challenge_method
    if method and method not in ("S256", "plain"):
        return ("invalid_request", "AADSTS501491: Invalid code_challenge_method.")
    if pending.code_challenge and not re.fullmatch(
        r"[A-Za-z0-9\-._~]{43,128}", pending.code_challenge
    ):
        return (
            "invalid_request",
            "AADSTS50147: The size of the code challenge parameter isn't valid.",
        )
    return None


def _consent_page(state: EmulatorState, pending: PendingAuthorize, app_name: str) -> str:
    hint = (pending.login_hint or "").casefold()
    radios = []
    for i, account in enumerate(state.accounts.values()):
        checked = " checked" if account.email.casefold() == hint or (not hint and i == 0) else ""
        radios.append(
            f'<li><label><input type="radio" name="account" value="{html.escape(account.email)}"'
            f"{checked}> {html.escape(account.display_name)} &lt;{html.escape(account.email)}&gt;"
            f" ({account.drive_type})</label></li>"
        )
    scopes = "".join(f"<li>{html.escape(s)}</li>" for s in pending.scopes)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>Permissions requested</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;padding:0 1rem;"
        "color:#1b1f24}h1{font-size:1.4rem}ul{padding-left:1.2rem}fieldset{border:1px solid #ccd;"
        "border-radius:8px;margin:1rem 0}fieldset ul{list-style:none;padding:0}li{margin:.3rem 0}"
        "button{font:inherit;padding:.45rem 1rem;border-radius:6px;border:1px solid #ccd;"
        "background:#fff}button[value=accept]{background:#0364b8;color:#fff;border-color:#0364b8}"
        "</style></head><body>"
        "<h1>Permissions requested</h1>"
        f"<p><strong>{html.escape(app_name)}</strong> (local OneDrive emulator) wants to:</p>"
        f"<ul>{scopes}</ul>"
        '<form method="post">'
        f'<input type="hidden" name="request_id" value="{pending.id}">'
        f"<fieldset><legend>Account</legend><ul>{''.join(radios)}</ul>"
        '<label>or another e-mail: <input type="email" name="email"></label></fieldset>'
        '<button type="submit" name="action" value="accept">Accept</button> '
        '<button type="submit" name="action" value="cancel">Cancel</button>'
        "</form></body></html>"
    )


@bp.route("/<tenant>/oauth2/v2.0/authorize", methods=["POST"])
def consent(tenant: str) -> Response:
    """Handle Accept / Cancel: redirect back with a code, or with ``access_denied``."""
    state = get_state()
    with state.lock:
        pending = state.pending.pop(request.form.get("request_id", ""), None)
    if pending is None:
        return _error_page(400, 90014, "The sign-in request expired or was already used.")
    if request.form.get("action") != "accept":
        return _answer(
            pending,
            {
                "error": "access_denied",
                "error_description": "AADSTS65004: User declined to consent to access the app.",
                "state": pending.state,
            },
        )
    email = (request.form.get("email") or request.form.get("account") or "").strip()
    if not email or "@" not in email:
        return _error_page(400, 50034, "Choose an account or type an e-mail address.")
    with state.lock:
        account = state.account(email)
        if account is None:
            account = state.add_account(email, email.split("@")[0].title(), "personal")
        code = AuthCode(
            code="M.C5" + new_secret(48),
            client_id=pending.client_id,
            redirect_uri=pending.redirect_uri,
            email=account.email,
            scopes=pending.scopes,
            code_challenge=pending.code_challenge,
            code_challenge_method=pending.code_challenge_method,
            nonce=pending.nonce,
            expires_at=utcnow() + timedelta(seconds=CODE_LIFETIME),
        )
        state.codes[code.code] = code
    return _answer(pending, {"code": code.code, "state": pending.state})


def _client_credentials() -> tuple[str | None, str | None, Response | None]:
    form = request.form
    client_id, secret = form.get("client_id"), form.get("client_secret")
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        if client_id and auth.username != client_id:
            return (
                None,
                None,
                identity_error(
                    400,
                    "invalid_request",
                    900144,
                    "client_id in the body and in the Authorization header differ.",
                ),
            )
        client_id, secret = auth.username, auth.password
    return client_id, secret, None


@bp.route("/<tenant>/oauth2/v2.0/token", methods=["POST"])
def token(tenant: str) -> Response:
    """Redeem an authorization code or a refresh token."""
    state = get_state()
    if request.mimetype != "application/x-www-form-urlencoded":
        return identity_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        )
    client_id, secret, err = _client_credentials()
    if err:
        return err
    if not client_id:
        return identity_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        )
    client = state.clients.get(client_id)
    if client is None:
        return identity_error(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory.",
        )
    injected = _injected_token_error(state, client_id)
    if injected is not None:
        return injected
    if client.client_secret is not None:
        if not secret:
            return identity_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: "
                "'client_assertion' or 'client_secret'.",
            )
        if not secrets.compare_digest(secret, client.client_secret):
            return identity_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent "
                "in the request is the client secret value, not the client "
                f"secret ID, for a secret added to app '{client_id}'.",
            )
    grant = request.form.get("grant_type")
    if grant == "authorization_code":
        return _redeem_code(state, client_id)
    if grant == "refresh_token":
        return _redeem_refresh(state, client_id)
    if not grant:
        return identity_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        )
    return identity_error(
        400,
        "unsupported_grant_type",
        70003,
        f"The app requested an unsupported grant type '{grant}'.",
    )


def _pkce_ok(code: AuthCode, verifier: str | None) -> bool:
    if not code.code_challenge:
        return True
    if not verifier or not _VERIFIER.fullmatch(verifier):
        return False
    if code.code_challenge_method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        computed = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        return secrets.compare_digest(computed, code.code_challenge)
    return secrets.compare_digest(verifier, code.code_challenge)


def _redeem_code(state: EmulatorState, client_id: str) -> Response:
    form = request.form
    value = form.get("code")
    if not value:
        return identity_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'code'.",
        )
    with state.lock:
        code = state.codes.get(value)
        if code is None or code.client_id != client_id:
            return identity_error(
                400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
            )
        if code.redeemed:
            return identity_error(
                400,
                "invalid_grant",
                54005,
                "OAuth2 Authorization code was already redeemed, please retry "
                "with a new valid code or use an existing refresh token.",
            )
        if code.expires_at <= utcnow():
            return identity_error(
                400,
                "invalid_grant",
                70008,
                "The provided authorization code or refresh token has expired due to inactivity.",
            )
        redirect_uri = form.get("redirect_uri")
        if redirect_uri != code.redirect_uri:
            return identity_error(
                400,
                "invalid_grant",
                500112,
                f"The reply address '{redirect_uri}' does not match the reply "
                "address provided when requesting Authorization code.",
            )
        if not _pkce_ok(code, form.get("code_verifier")):
            return identity_error(
                400,
                "invalid_grant",
                501481,
                "The Code_Verifier does not match the code_challenge supplied "
                "in the authorization request.",
            )
        code.redeemed = True
    return token_response(state, code.email, client_id, code.scopes, code.nonce)


def _redeem_refresh(state: EmulatorState, client_id: str) -> Response:
    value = request.form.get("refresh_token")
    if not value:
        return identity_error(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'refresh_token'.",
        )
    with state.lock:
        refresh = state.refresh_tokens.get(value)
        if refresh is None or refresh.client_id != client_id or not refresh.valid:
            return identity_error(
                400,
                "invalid_grant",
                70000,
                "The provided value for the input parameter 'refresh_token' is not valid.",
            )
        if refresh.revoked:
            return identity_error(
                400,
                "invalid_grant",
                65001,
                "The user or administrator has not consented to use the "
                f"application with ID '{client_id}'. Send an interactive "
                "authorization request for this user and resource.",
            )
        refresh.valid = False  # rotation: see the module docstring
    return token_response(state, refresh.email, client_id, refresh.scopes, None)


def token_body(
    state: EmulatorState, email: str, client_id: str, scopes: list[str], nonce: str | None
) -> dict[str, object]:
    """Issue tokens and return the identity platform's token response body."""
    raw = state.issue_tokens(email, client_id, scopes)
    body: dict[str, object] = {
        "token_type": "Bearer",
        # The service echoes the granted scopes without offline_access.
        "scope": " ".join(s for s in scopes if s != "offline_access"),
        "expires_in": raw["expires_in"],
        "ext_expires_in": raw["expires_in"],
        "access_token": raw["access_token"],
    }
    if "refresh_token" in raw:
        body["refresh_token"] = raw["refresh_token"]
    if "openid" in scopes:
        body["id_token"] = _id_token(state, email, client_id, nonce)
    return body


def token_response(
    state: EmulatorState, email: str, client_id: str, scopes: list[str], nonce: str | None
) -> Response:
    """Return the token endpoint's success response."""
    body = token_body(state, email, client_id, scopes, nonce)
    resp = Response(json.dumps(body), content_type="application/json; charset=utf-8")
    resp.headers["Cache-Control"] = "no-store, no-cache"
    resp.headers["Pragma"] = "no-cache"
    return resp


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _id_token(state: EmulatorState, email: str, client_id: str, nonce: str | None) -> str:
    account = state.account(email)
    assert account is not None  # noqa: S101 - tokens are only issued for known accounts
    now = int(utcnow().timestamp())
    tid = (
        "9188040d-6c67-4c5b-b112-36a304b66dad"
        if account.drive_type == "personal"
        else ("00000000-0000-0000-0000-00000000b10b")
    )
    claims: dict[str, object] = {
        "ver": "2.0",
        "iss": f"{request.url_root}{tid}/v2.0",
        "aud": client_id,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "sub": hashlib.sha256(f"{account.user_id}:{client_id}".encode()).hexdigest()[:43],
        "oid": account.user_id,
        "tid": tid,
        "name": account.display_name,
        "preferred_username": account.email,
        "email": account.email,
    }
    if nonce:
        claims["nonce"] = nonce
    return f"{_b64({'typ': 'JWT', 'alg': 'none'})}.{_b64(claims)}."
