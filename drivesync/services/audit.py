"""The audit log: an append-only record of who did what, from where, heard from domain events.

Entries are written by receivers of ``drivesync.events`` (sign-in, connect, download, export,
deletion …) and by the operator CLI (``record`` with ``actor="operator"``). A receiver adds its
row to the sender's session and leaves the commit to the sender, as ``events.py`` asks.

What an entry holds: the time, the account it belongs to (``user_id``), the actor (``user``,
``operator`` or ``system``), an action, an object as type and id (never a file name: names of
health documents are shown to their owner from the live row), the client address as the trusted
proxy reported it (``request.remote_addr`` after ProxyFix), and the request id when the
observability middleware set ``g.request_id``.

On PostgreSQL the app's role may only INSERT and SELECT this table (see the migration and
``flask db-grant``); it reads only its own user's rows (row-level security). Export and prune
are operator commands that run as the owner role. Deleting an account pseudonymises its entries
through a SECURITY DEFINER function: ``user_id`` becomes NULL and ``actor_hash`` a keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app, g, has_app_context, has_request_context, request
from sqlalchemy import delete, func, text, update

from .. import events
from ..extensions import db
from ..models import AuditEvent, File, User, utcnow
from .paging import Pagination

logger = logging.getLogger(__name__)

OPERATOR = "operator"
SYSTEM = "system"
USER = "user"
ANONYMOUS = ""  # stored as NULL: nobody known

# signal -> (action, object type); the object id is the file id for file objects.
_ACCOUNT_SIGNALS = {
    events.account_created: "account.created",
    events.signed_in: "sign_in.succeeded",
    events.signed_out: "sign_out",
    events.sessions_ended: "sessions.ended",
    events.password_changed: "password.changed",
    events.password_reset_requested: "password.reset_requested",
    events.password_reset: "password.reset",
    events.connected: "onedrive.connected",
    events.reconnected: "onedrive.reconnected",
    events.disconnected: "onedrive.disconnected",
    events.reconnect_needed: "onedrive.reconnect_needed",
    events.data_exported: "data.exported",
}
_FILE_SIGNALS = {
    events.file_downloaded: "file.downloaded",
    events.file_deleted: "file.deleted",
}

# How each action reads on the Activity page (the owner's view, so "you").
SENTENCES = {
    "account.created": "You created your account.",
    "sign_in.succeeded": "You signed in.",
    "sign_in.failed": "Someone tried to sign in to your account with a wrong password.",
    "sign_out": "You signed out.",
    "sessions.ended": "You signed out everywhere: every other session was ended.",
    "password.changed": "You changed your password.",
    "password.reset_requested": "A password reset link was requested for your account.",
    "password.reset": "Your password was reset through an e-mailed link.",
    "onedrive.connected": "You connected OneDrive.",
    "onedrive.reconnected": "You reconnected OneDrive.",
    "onedrive.disconnected": "You disconnected OneDrive.",
    "onedrive.reconnect_needed": "OneDrive asked to be reconnected; syncing paused.",
    "data.exported": "You downloaded an export of all your data.",
    "file.downloaded": "You downloaded a file.",
    "file.deleted": "You deleted a file.",
    "account.deleted": "The account was deleted.",
    "user.created": "An operator created your account.",
}


@dataclass(frozen=True)
class ActivityPage(Pagination):
    """One page of a user's audit entries, newest first."""

    items: list[AuditEvent]
    page: int
    per_page: int
    total: int


def keyed_hash(value: str) -> str:
    """Return a keyed hash of ``value`` (HMAC-SHA256 under a key derived from SECRET_KEY).

    Links entries of one pseudonymised account or one unknown address to each other without
    naming either. Changing SECRET_KEY breaks the link for older entries, which is acceptable.
    """
    secret = str(current_app.config["SECRET_KEY"]).encode()
    key = hmac.new(secret, b"drivesync audit pseudonym v1", hashlib.sha256).digest()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def _request_details() -> tuple[str | None, str | None]:
    """Return the client address (through ProxyFix) and the request id, when in a request."""
    if not has_request_context():
        return None, None
    request_id = g.get("request_id")
    return (request.remote_addr or None), (str(request_id)[:64] if request_id else None)


def record(
    action: str,
    *,
    user_id: int | None,
    actor: str | None = None,  # None: the default below; ANONYMOUS: nobody known
    object_type: str | None = None,
    object_id: object = None,
    detail: str | None = None,
    actor_hash: str | None = None,
) -> AuditEvent:
    """Add an audit entry to the current session (the caller commits)."""
    source_ip, request_id = _request_details()
    if actor is None:
        actor = USER if has_request_context() else SYSTEM
    entry = AuditEvent(
        created_at=utcnow(),
        user_id=user_id,
        actor=(actor or None) if actor is not None else (USER if has_request_context() else SYSTEM),
        actor_hash=actor_hash,
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id)[:64],
        detail=detail[:200] if detail else None,
        source_ip=source_ip,
        request_id=request_id,
    )
    db.session.add(entry)
    return entry


def _account_receiver(action: str) -> Any:
    # drivesync itself notices that OneDrive wants a reconnect, whoever's request it was.
    default_actor = SYSTEM if action == "onedrive.reconnect_needed" else None

    def receive(sender: object, **kw: Any) -> None:
        actor = kw.get("actor") or default_actor
        record(action, user_id=kw.get("user_id"), actor=actor, detail=kw.get("reason"))

    return receive


def _file_receiver(action: str) -> Any:
    def receive(sender: object, **kw: Any) -> None:
        record(
            action,
            user_id=kw.get("user_id"),
            actor=kw.get("actor"),
            object_type="file",
            object_id=kw.get("file_id"),
        )

    return receive


def _sign_in_failed(sender: object, **kw: Any) -> None:
    """Record a failed sign-in: on the account when it exists, else under a hash of the address."""
    email = str(kw.get("email") or "")
    user_id = None
    if email:
        user_id = db.session.execute(
            db.select(User.id).where(User.email == email)
        ).scalar_one_or_none()
    # Whoever typed the wrong password is unknown: no actor.
    if user_id is not None:
        record("sign_in.failed", user_id=user_id, actor=ANONYMOUS)
    else:
        record(
            "sign_in.failed",
            user_id=None,
            actor=ANONYMOUS,
            object_type="address",
            object_id=keyed_hash("address:" + email),
        )


def _account_deleted(sender: object, **kw: Any) -> None:
    """Record a deletion under the account's pseudonym (the row no longer names the user)."""
    user_id = kw.get("user_id")
    record(
        "account.deleted",
        user_id=None,
        actor=kw.get("actor"),
        actor_hash=keyed_hash(f"user:{user_id}"),
    )


_receivers: list[Any] = []


def subscribe() -> None:
    """Connect the audit receivers to the domain events (idempotent)."""
    if _receivers:
        return
    for signal, action in _ACCOUNT_SIGNALS.items():
        fn = _account_receiver(action)
        _receivers.append(fn)  # blinker keeps weak references: hold the closures
        signal.connect(fn)
    for signal, action in _FILE_SIGNALS.items():
        fn = _file_receiver(action)
        _receivers.append(fn)
        signal.connect(fn)
    for signal, fn in (
        (events.sign_in_failed, _sign_in_failed),
        (events.account_deleted, _account_deleted),
    ):
        _receivers.append(fn)
        signal.connect(fn)


def activity(user_id: int, page: int = 1, per_page: int = 50) -> ActivityPage:
    """Return one page of the user's own audit entries, newest first."""
    where = AuditEvent.user_id == user_id
    total = db.session.execute(
        db.select(func.count()).select_from(AuditEvent).where(where)
    ).scalar_one()
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    items = list(
        db.session.execute(
            db.select(AuditEvent)
            .where(where)
            .order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        ).scalars()
    )
    return ActivityPage(items=items, page=page, per_page=per_page, total=total)


def live_file_names(user_id: int, entries: list[AuditEvent]) -> dict[str, str]:
    """Return the current names of the owner's files that ``entries`` mention, by id string."""
    ids = {int(e.object_id) for e in entries if e.object_type == "file" and e.object_id}
    if not ids:
        return {}
    rows = db.session.execute(
        db.select(File.id, File.original_name).where(File.owner_id == user_id, File.id.in_(ids))
    ).all()
    return {str(i): name for i, name in rows}


def entry_dict(e: AuditEvent) -> dict[str, Any]:
    """Return an entry as plain JSON-ready values."""
    return {
        "id": e.id,
        "time": e.created_at.isoformat(),
        "user_id": e.user_id,
        "actor": e.actor,
        "actor_hash": e.actor_hash,
        "action": e.action,
        "object_type": e.object_type,
        "object_id": e.object_id,
        "detail": e.detail,
        "source_ip": e.source_ip,
        "request_id": e.request_id,
    }


def user_entries(user_id: int) -> list[dict[str, Any]]:
    """Return all of the user's own entries, oldest first (for their export)."""
    rows = db.session.execute(
        db.select(AuditEvent)
        .where(AuditEvent.user_id == user_id)
        .order_by(AuditEvent.created_at, AuditEvent.id)
    ).scalars()
    return [entry_dict(e) for e in rows]


def export_lines(since: datetime | None, until: datetime | None) -> Iterator[str]:
    """Yield every entry in [since, until) as one JSON line (operator command, owner role)."""
    query = db.select(AuditEvent).order_by(AuditEvent.created_at, AuditEvent.id)
    if since is not None:
        query = query.where(AuditEvent.created_at >= since)
    if until is not None:
        query = query.where(AuditEvent.created_at < until)
    for e in db.session.execute(query.execution_options(yield_per=500)).scalars():
        yield json.dumps(entry_dict(e), sort_keys=True)


def prune(days: int) -> int:
    """Delete entries older than ``days`` days; return how many (operator command, owner role)."""
    cutoff = utcnow() - timedelta(days=days)
    result = db.session.execute(
        delete(AuditEvent).where(AuditEvent.created_at < cutoff),
        execution_options={"synchronize_session": False},
    )
    db.session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]  # CursorResult has rowcount


def pseudonymise(user_id: int) -> None:
    """Replace ``user_id`` on the user's entries with their keyed hash (the caller commits).

    On PostgreSQL the app's role cannot UPDATE the table; the migration's SECURITY DEFINER
    function does exactly this one change, and only for the user the transaction is scoped to.
    """
    pseudonym = keyed_hash(f"user:{user_id}")
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(
            text("SELECT audit_pseudonymise(:u, :h)"), {"u": user_id, "h": pseudonym}
        )
        return
    db.session.execute(
        update(AuditEvent)
        .where(AuditEvent.user_id == user_id)
        .values(user_id=None, actor_hash=pseudonym),
        execution_options={"synchronize_session": False},
    )


def retention_days() -> int:
    """Return the configured retention period in days."""
    return int(current_app.config.get("AUDIT_RETENTION_DAYS", 365)) if has_app_context() else 365
