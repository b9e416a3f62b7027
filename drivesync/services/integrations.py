"""Connect, reconnect and disconnect OneDrive; tokens in and out of the vault; Graph clients.

Tokens are only ever decrypted here, at the moment a Graph call needs one, and never returned
to a view. Refresh is single-flight per integration: a process lock plus, on PostgreSQL, a row
lock (``SELECT … FOR UPDATE``), so N workers that meet an expired token cause one refresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from flask import current_app
from sqlalchemy import delete, update
from sqlalchemy.orm import undefer

from .. import events
from ..extensions import db
from ..graph import oauth, urls
from ..graph.client import GraphClient
from ..graph.errors import AuthError
from ..graph.retry import Pacer
from ..models import File, Integration, OAuthToken, RemoteItem, RemoteItemChange, User, utcnow
from ..scope import user_scope
from ..vault import Vault, development_keys
from .errors import ServiceError

logger = logging.getLogger(__name__)

PROVIDER = "onedrive"
REFRESH_MARGIN = timedelta(minutes=5)
APP_FOLDER_SCOPE = "Files.ReadWrite.AppFolder"
_refresh_locks: dict[int, threading.Lock] = {}
_refresh_locks_guard = threading.Lock()
# A busy token endpoint (429, 5xx, temporarily_unavailable) is tried a few times, honouring
# Retry-After, while the refresh lock is held: short, because other requests wait on it.
REFRESH_PACER = Pacer(max_attempts=4, base=1.0, cap=8.0, max_total_wait=30.0)


class NotConnected(ServiceError):
    """The user has not connected OneDrive."""

    status = 409

    def __init__(self, message: str = "Connect your OneDrive first.") -> None:
        super().__init__(message)


class ReauthRequired(ServiceError):
    """Microsoft no longer accepts the stored sign-in; the user must reconnect."""

    status = 409

    def __init__(
        self, message: str = "OneDrive needs you to sign in again: use Reconnect."
    ) -> None:
        super().__init__(message)


@dataclass(frozen=True)
class ConnectStart:
    """What a view keeps in the session between the redirect and the callback."""

    url: str
    state: str
    code_verifier: str


# -- configuration -------------------------------------------------------------------------------


def vault() -> Vault:
    """Return the vault for the configured token keys (a generated key in development)."""
    cfg = current_app.config
    keys = cfg["TOKEN_KEYS"]
    if not keys:
        if cfg["ENV_NAME"] == "production" and not cfg["TESTING"]:
            raise ServiceError("Token encryption is not configured.")
        keys = development_keys(cfg["INSTANCE_DIR"])
        cfg["TOKEN_KEYS"] = keys
    return Vault(keys)


def oauth_settings(redirect_uri: str = "") -> oauth.OAuthSettings:
    """Return the identity-platform settings from the app configuration."""
    cfg = current_app.config
    if not cfg["MS_CLIENT_ID"]:
        raise ServiceError(
            "OneDrive is not configured on this server (DRIVESYNC_MS_CLIENT_ID is missing)."
        )
    return oauth.OAuthSettings(
        client_id=cfg["MS_CLIENT_ID"],
        client_secret=cfg["MS_CLIENT_SECRET"] or None,
        tenant=cfg["MS_TENANT"],
        authority=cfg["MS_AUTHORITY"],
        scopes=cfg["MS_SCOPES"].split(),
        redirect_uri=cfg["MS_REDIRECT_URI"] or redirect_uri,
    )


def uses_app_folder() -> bool:
    """Return whether the configured scopes limit us to the app's own folder."""
    return APP_FOLDER_SCOPE in current_app.config["MS_SCOPES"].split()


# -- reading -------------------------------------------------------------------------------------


def get_integration(user_id: int) -> Integration | None:
    """Return the user's OneDrive integration, or ``None``."""
    return db.session.execute(
        db.select(Integration).where(
            Integration.user_id == user_id, Integration.provider == PROVIDER
        )
    ).scalar_one_or_none()


def require_integration(user_id: int) -> Integration:
    """Return the user's active integration or raise ``NotConnected`` / ``ReauthRequired``."""
    integration = get_integration(user_id)
    if integration is None:
        raise NotConnected()
    if not integration.active:
        raise ReauthRequired()
    return integration


# -- tokens --------------------------------------------------------------------------------------


def _context(integration_id: int, column: str) -> str:
    return f"oauth_tokens:{integration_id}:{column}"


def _expires_at(token: oauth.TokenResponse) -> datetime:
    if token.get("expires_at"):
        return datetime.fromtimestamp(float(token["expires_at"]), UTC)
    return utcnow() + timedelta(seconds=int(token.get("expires_in") or 3600))


def save_token(integration: Integration, token: oauth.TokenResponse) -> OAuthToken:
    """Encrypt and store ``token`` for ``integration`` (access and refresh token together)."""
    v = vault()
    row = db.session.execute(
        db.select(OAuthToken).where(OAuthToken.integration_id == integration.id)
    ).scalar_one_or_none()
    if row is None:
        row = OAuthToken(integration_id=integration.id, user_id=integration.user_id)
        db.session.add(row)
    row.access_token_encrypted = v.encrypt(token["access_token"], _context(integration.id, "a"))
    refresh_token = token.get("refresh_token")
    row.refresh_token_encrypted = (
        v.encrypt(refresh_token, _context(integration.id, "r")) if refresh_token else None
    )
    row.expires_at = _expires_at(token)
    scope = token.get("scope") or ""
    row.scope = " ".join(scope) if isinstance(scope, list) else str(scope)
    row.key_id = v.current_key_id
    return row


def _load_token_row(integration_id: int, lock: bool) -> OAuthToken | None:
    stmt = (
        db.select(OAuthToken)
        .where(OAuthToken.integration_id == integration_id)
        .options(
            undefer(OAuthToken.access_token_encrypted), undefer(OAuthToken.refresh_token_encrypted)
        )
        .execution_options(populate_existing=True)
    )
    if lock and db.session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return db.session.execute(stmt).scalar_one_or_none()


def _lock_for(integration_id: int) -> threading.Lock:
    with _refresh_locks_guard:
        return _refresh_locks.setdefault(integration_id, threading.Lock())


def mark_needs_reauth(user_id: int, message: str, reason: str = "reauth_required") -> bool:
    """Flag the user's integration *Reconnect needed* with ``message``; return whether it changed.

    ``reason`` is the stable key (``oauth.TOKEN_PROBLEMS``). The first reason of an episode
    stays: a later generic failure does not overwrite "expired after 90 days" or the admin link.
    """
    db.session.rollback()
    changed = db.session.execute(
        update(Integration)
        .where(
            Integration.user_id == user_id,
            Integration.provider == PROVIDER,
            Integration.status != "needs_reauth",
        )
        .values(status="needs_reauth", status_reason=message[:500])
        .returning(Integration.id)
    ).first()
    if changed is not None:
        events.reconnect_needed.send(None, user_id=user_id, reason=reason)
    db.session.commit()
    if changed is not None:
        logger.info("user %s: OneDrive needs reconnecting (%s)", user_id, reason)
    return changed is not None


# -- the operator notice -------------------------------------------------------------------------
# When Microsoft refuses the app's own credentials (an expired or wrong client secret) every user
# is affected and none of them can fix it. The notice lives in this process only: no table holds
# server-wide state and this change adds none. Each web and worker process learns it from its own
# failed token request, and forgets it on its next successful one or on restart (which is how a
# new secret is deployed). The ERROR log line is what reaches the operator from every process.


@dataclass(frozen=True)
class OperatorNotice:
    """Why syncing is down for everyone, and since when."""

    reason: str
    message: str
    since: datetime


_operator_notice: OperatorNotice | None = None


def operator_notice() -> str | None:
    """Return the server-wide sentence a banner shows while the app's credentials are refused."""
    notice = _operator_notice
    return notice.message if notice else None


def _report_operator_problem(exc: oauth.AppCredentialsError) -> None:
    global _operator_notice
    problem = exc.problem
    if _operator_notice is None or _operator_notice.reason != problem.reason:
        _operator_notice = OperatorNotice(problem.reason, problem.message, utcnow())
    logger.error(
        "Microsoft refused this server's app credentials (%s, %s): %s. Users are not asked "
        "to reconnect; OneDrive syncing is paused until this is fixed.",
        exc.inner_code or exc.code,
        problem.reason,
        exc.operator_action,
    )
    events.app_credentials_rejected.send(None, reason=problem.reason)


def _clear_operator_notice() -> None:
    global _operator_notice
    if _operator_notice is not None:
        logger.warning("Microsoft accepts this server's app credentials again")
        _operator_notice = None


class TokenProvider:
    """Hand a GraphClient a valid access token; refresh ahead of expiry or after a 401.

    ``force`` means "the last token I gave you was refused": if another thread or worker has
    refreshed since, its token is used; otherwise this provider refreshes, once.
    """

    def __init__(
        self,
        user_id: int,
        integration_id: int,
        refresher: Callable[[oauth.OAuthSettings, str], oauth.TokenResponse] | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.user_id = user_id
        self.integration_id = integration_id
        self._refresher = refresher or oauth.refresh
        self._pacer = pacer or REFRESH_PACER
        self._last: str | None = None

    def __call__(self, force_refresh: bool = False) -> str:
        """Return an access token that Graph should accept."""
        with _lock_for(self.integration_id):
            try:
                token = self._current(force_refresh)
            except BaseException:
                db.session.rollback()
                raise
            db.session.commit()  # ends the row lock's transaction
            self._last = token
            return token

    def _current(self, force: bool) -> str:
        row = _load_token_row(self.integration_id, lock=True)
        if row is None:
            raise AuthError("OneDrive is not connected.", code="not_connected")
        v = vault()
        access = v.decrypt(row.access_token_encrypted, _context(self.integration_id, "a"))
        fresh = row.expires_at - REFRESH_MARGIN > utcnow()
        if fresh and (not force or (self._last is not None and access != self._last)):
            return access
        if not row.refresh_token_encrypted:
            self._reauth(
                "Microsoft did not grant offline access; reconnect OneDrive.", "no_refresh_token"
            )
        refresh_token = v.decrypt(row.refresh_token_encrypted, _context(self.integration_id, "r"))
        settings = oauth_settings()
        try:
            new = self._pacer.call(lambda: self._refresher(settings, refresh_token))
        except oauth.SignInError as exc:  # a known AADSTS reason: its own sentence
            events.token_refreshed.send(None, user_id=self.user_id, outcome="rejected")
            self._reauth(exc.human_message(), exc.problem.reason, exc)
        except AuthError as exc:  # invalid_grant and friends without a known code
            events.token_refreshed.send(None, user_id=self.user_id, outcome="rejected")
            self._reauth(exc.human_message())
        except oauth.AppCredentialsError as exc:  # the operator's problem, not the user's
            events.token_refreshed.send(None, user_id=self.user_id, outcome="error")
            _report_operator_problem(exc)
            raise
        except Exception:
            events.token_refreshed.send(None, user_id=self.user_id, outcome="error")
            raise
        events.token_refreshed.send(None, user_id=self.user_id, outcome="ok")
        _clear_operator_notice()
        integration = db.session.get(Integration, self.integration_id)
        assert integration is not None  # noqa: S101 - the token row references it
        save_token(integration, new)
        logger.info("refreshed OneDrive token for integration %s", self.integration_id)
        return str(new["access_token"])

    def _reauth(
        self, message: str, reason: str = "reauth_required", exc: AuthError | None = None
    ) -> NoReturn:
        mark_needs_reauth(self.user_id, message, reason)
        raise exc or AuthError(message, code="invalid_grant")


def graph_client_for(user_id: int) -> tuple[GraphClient, Integration]:
    """Return a Graph client acting for the user, and their active integration."""
    integration = require_integration(user_id)
    client = GraphClient(
        TokenProvider(user_id, integration.id), base_url=current_app.config["GRAPH_URL"]
    )
    # Downloads and upload sessions go only where the configuration allows (probe L5).
    urls.enforce(
        client.plain_session,
        urls.UrlPolicy(client.base_url, current_app.config["GRAPH_CONTENT_DOMAINS"]),
    )
    return client, integration


# -- connect / disconnect ------------------------------------------------------------------------


def begin_connect(redirect_uri: str) -> ConnectStart:
    """Return the Microsoft sign-in URL with a fresh ``state`` and PKCE verifier."""
    url, state, verifier = oauth.authorization_url(oauth_settings(redirect_uri))
    return ConnectStart(url=url, state=state, code_verifier=verifier)


def complete_connect(
    user_id: int,
    code: str,
    code_verifier: str,
    redirect_uri: str,
    exchange: Callable[[oauth.OAuthSettings, str, str], oauth.TokenResponse] | None = None,
) -> Integration:
    """Redeem the code, read the account and drive, and store the integration and tokens.

    Reconnecting the same Microsoft account keeps every file's OneDrive link. Connecting a
    different account resets the links (those items live in the other account's drive): the
    files become ``not_synced`` and the next Sync All uploads them to the new drive.
    """
    settings = oauth_settings(redirect_uri)
    try:
        token = (exchange or oauth.exchange_code)(settings, code, code_verifier)
    except oauth.AppCredentialsError as exc:
        _report_operator_problem(exc)
        raise
    _clear_operator_notice()
    client = GraphClient(
        lambda force: str(token["access_token"]), base_url=current_app.config["GRAPH_URL"]
    )
    me = client.me()
    drive = client.drive()
    if uses_app_folder():
        folder = client.approot()
        folder_path = "Apps/" + folder.get("name", "drivesync")
    else:
        folder_path = current_app.config["ONEDRIVE_FOLDER"].strip("/")
        folder = client.ensure_folder(folder_path)
    account_id = str(me.get("id") or "")
    integration = get_integration(user_id)
    if integration is None:
        integration = Integration(user_id=user_id, provider=PROVIDER)
        db.session.add(integration)
    elif integration.account_id and integration.account_id != account_id:
        logger.info("user %s switched Microsoft account; resetting OneDrive links", user_id)
        _reset_file_links(user_id)
    quota = drive.get("quota") or {}
    integration.status = "active"
    integration.status_reason = None
    integration.account_id = account_id
    integration.account_name = me.get("displayName") or None
    integration.account_email = me.get("mail") or me.get("userPrincipalName") or None
    integration.drive_id = drive.get("id")
    integration.drive_type = drive.get("driveType")
    integration.folder_path = folder_path
    integration.folder_id = folder.get("id")
    integration.quota_used = quota.get("used")
    integration.quota_total = quota.get("total")
    integration.connected_at = utcnow()
    # The first delta check (the initial enumeration of the folder) runs at the next tick.
    integration.delta_due_at = integration.connected_at
    db.session.flush()
    save_token(integration, token)
    db.session.commit()
    logger.info("user %s connected OneDrive (%s drive)", user_id, integration.drive_type)
    return integration


def _reset_file_links(user_id: int) -> None:
    # The mirror and the cursor describe the other account's drive.
    db.session.execute(delete(RemoteItem).where(RemoteItem.user_id == user_id))
    db.session.execute(delete(RemoteItemChange).where(RemoteItemChange.user_id == user_id))
    db.session.execute(
        update(Integration)
        .where(Integration.user_id == user_id)
        .values(delta_link=None, delta_checked_at=None, remote_new_count=0)
    )
    db.session.execute(
        update(File)
        .where(File.owner_id == user_id)
        .values(
            onedrive_sync_status="not_synced",
            onedrive_id=None,
            onedrive_etag=None,
            onedrive_ctag=None,
            onedrive_path=None,
            onedrive_web_url=None,
            onedrive_name=None,
            onedrive_error=None,
            onedrive_note=None,
            onedrive_synced_at=None,
            synced_content_hash=None,
            upload_url=None,
            upload_expires_at=None,
            bytes_sent=0,
            claimed_at=None,
            heartbeat_at=None,
        )
    )


def disconnect(user_id: int) -> bool:
    """Delete the user's tokens and integration; return whether there was one (idempotent).

    Files stay in the library. Their OneDrive links are reset: without the connection we can no
    longer vouch for them, and reconnecting re-matches each file by name and quickXorHash
    without uploading it again.
    """
    integration = get_integration(user_id)
    if integration is None:
        return False
    db.session.delete(integration)  # cascades to the token row
    _reset_file_links(user_id)
    db.session.commit()
    logger.info("user %s disconnected OneDrive", user_id)
    return True


def rotate_token_keys(batch: int = 200) -> tuple[int, int]:
    """Re-encrypt every stored token with the current key; return (rotated, total).

    Runs one user at a time inside that user's scope: under PostgreSQL row-level security an
    unscoped transaction sees no token rows at all.
    """
    v = vault()
    db.session.commit()  # each user's transactions must begin inside their scope
    # users has no RLS; oauth_tokens would look empty before a user is in scope.
    user_ids = list(db.session.execute(db.select(User.id).order_by(User.id)).scalars())
    db.session.commit()
    rotated = total = 0
    for user_id in user_ids:
        with user_scope(user_id):
            r, t = _rotate_user_tokens(v, user_id, batch)
        rotated, total = rotated + r, total + t
    return rotated, total


def _rotate_user_tokens(v: Vault, user_id: int, batch: int) -> tuple[int, int]:
    rotated = total = 0
    last_id = 0
    while True:
        stmt = (
            db.select(OAuthToken)
            .where(OAuthToken.user_id == user_id, OAuthToken.id > last_id)
            .order_by(OAuthToken.id)
            .limit(batch)
            .options(
                undefer(OAuthToken.access_token_encrypted),
                undefer(OAuthToken.refresh_token_encrypted),
            )
        )
        if db.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update()  # a concurrent refresh must not be overwritten
        rows = list(db.session.execute(stmt).scalars())
        if not rows:
            db.session.commit()  # end the scoped transaction inside the scope
            return rotated, total
        for row in rows:
            total += 1
            last_id = row.id
            ctx_a, ctx_r = _context(row.integration_id, "a"), _context(row.integration_id, "r")
            if v.needs_rotation(row.access_token_encrypted) or (
                row.refresh_token_encrypted and v.needs_rotation(row.refresh_token_encrypted)
            ):
                row.access_token_encrypted = v.rotate(row.access_token_encrypted, ctx_a)
                if row.refresh_token_encrypted:
                    row.refresh_token_encrypted = v.rotate(row.refresh_token_encrypted, ctx_r)
                row.key_id = v.current_key_id
                rotated += 1
        db.session.commit()


def token_exists(user_id: int) -> bool:
    """Return whether a token is stored for the user (what a user may know about it)."""
    return (
        db.session.execute(db.select(OAuthToken.id).where(OAuthToken.user_id == user_id)).first()
        is not None
    )
