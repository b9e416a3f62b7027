"""Sync on upload: the per-user setting, Pause / Resume, and the debounced due time.

An upload or a replacement (``events.file_uploaded`` / ``events.file_replaced``) marks the
user's automatic sync as due ``AUTOSYNC_DEBOUNCE_SECONDS`` later, in the uploader's own
transaction, so several uploads in a row make one run. The due time lives on the integration row
(``autosync_due_at``): that is the truth. After the commit a wake-up is sent to the task backend
for that moment (``tasks.wake_user``); if it is lost, the scheduler's next tick finds the due time
anyway. Nothing is marked due while the user is disconnected, must reconnect, has paused, or has
switched automatic sync off (the UPDATE's WHERE says so).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import event, or_, update
from sqlalchemy.orm import Session

from .. import events, tasks
from ..extensions import db
from ..models import File, Integration, utcnow
from .integrations import PROVIDER, NotConnected, get_integration
from .transfer import changed

logger = logging.getLogger(__name__)

_WAKEUPS = "drivesync.autosync.wakeups"  # session.info key: user id -> seconds until due


def debounce() -> float:
    """Return the configured debounce in seconds."""
    return float(current_app.config["AUTOSYNC_DEBOUNCE_SECONDS"])


def _integration_update(user_id: int) -> Any:
    return (
        update(Integration)
        .where(Integration.user_id == user_id, Integration.provider == PROVIDER)
        .execution_options(synchronize_session=False)
    )


def mark_due(user_id: int, now: datetime | None = None) -> bool:
    """Mark the user's automatic sync due after the debounce, in the caller's transaction.

    Return whether it was marked (False while disconnected, reconnect-needed, paused or off).
    A due time already in the past stays: that work is due now and the debounce must not push
    it back; a future one moves to ``now + debounce`` (uploads keep coalescing).
    """
    now = now or utcnow()
    wait = debounce()
    moved = changed(
        _integration_update(user_id)
        .where(
            Integration.status == "active",
            Integration.autosync.is_(True),
            Integration.paused_at.is_(None),
            or_(Integration.autosync_due_at.is_(None), Integration.autosync_due_at > now),
        )
        .values(autosync_due_at=now + timedelta(seconds=wait))
    )
    if moved:
        db.session.info.setdefault(_WAKEUPS, {})[user_id] = wait
    return bool(moved)


def clear_due(user_id: int, seen: datetime) -> None:
    """Clear the due time if it is still the one acted on (a later upload keeps its own)."""
    db.session.execute(
        _integration_update(user_id)
        .where(Integration.autosync_due_at <= seen)
        .values(autosync_due_at=None)
    )


def _on_file_changed(sender: Any, *, user_id: int, **_: Any) -> None:
    mark_due(user_id)


def _on_connected(sender: Any, *, user_id: int, **_: Any) -> None:
    """A (re)connected user's waiting files go after the debounce (no Sync All needed)."""
    _due_if_pending(user_id)


def _send_wakeups(session: Session) -> None:
    """After a commit, wake the task backend for every due time that commit stored."""
    pending = session.info.pop(_WAKEUPS, None)
    if not pending:
        return
    for user_id, wait in pending.items():
        try:
            tasks.wake_user(user_id, wait)
        except Exception:  # the due time is committed: the next tick starts the sync anyway
            logger.warning("could not send the auto-sync wake-up for user %s", user_id)


def _drop_wakeups(session: Session, *args: Any) -> None:
    session.info.pop(_WAKEUPS, None)


def install(session_target: Any) -> None:
    """Listen for uploads and replacements, and send wake-ups after the commits that store them."""
    events.file_uploaded.connect(_on_file_changed)
    events.file_replaced.connect(_on_file_changed)
    events.connected.connect(_on_connected)
    events.reconnected.connect(_on_connected)
    if not event.contains(session_target, "after_commit", _send_wakeups):
        event.listen(session_target, "after_commit", _send_wakeups)
        event.listen(session_target, "after_rollback", _drop_wakeups)


# -- the user's settings ---------------------------------------------------------------------------


def _require(user_id: int) -> Integration:
    integration = get_integration(user_id)
    if integration is None:
        db.session.rollback()
        raise NotConnected()
    return integration


def set_enabled(user_id: int, enabled: bool) -> Integration:
    """Switch "Sync new and changed files automatically" on or off for the user."""
    _require(user_id)
    values: dict[str, Any] = {"autosync": enabled}
    if not enabled:
        values["autosync_due_at"] = None
    db.session.execute(_integration_update(user_id).values(**values))
    if enabled:
        _due_if_pending(user_id)
    db.session.commit()
    logger.info("user %s turned automatic sync %s", user_id, "on" if enabled else "off")
    return _require(user_id)


def pause(user_id: int) -> Integration:
    """Pause automatic syncing and retries for the user (Sync All still works).

    A pending due time is dropped; :func:`resume` sets a new one if files are waiting.
    """
    _require(user_id)
    db.session.execute(
        _integration_update(user_id)
        .where(Integration.paused_at.is_(None))
        .values(paused_at=utcnow(), autosync_due_at=None)
    )
    db.session.commit()
    logger.info("user %s paused automatic sync", user_id)
    return _require(user_id)


def resume(user_id: int) -> Integration:
    """Resume automatic syncing: files that waited while paused are synced after the debounce."""
    _require(user_id)
    db.session.execute(_integration_update(user_id).values(paused_at=None))
    _due_if_pending(user_id)
    db.session.commit()
    logger.info("user %s resumed automatic sync", user_id)
    return _require(user_id)


def waiting_files(user_id: int, limit: int) -> list[int]:
    """Return the ids of the user's files an automatic sync takes: new or changed, not skipped.

    Failed files are not among them: each waits for its own next try (services/failures.py).
    """
    return list(
        db.session.execute(
            db.select(File.id)
            .where(
                File.owner_id == user_id,
                File.onedrive_sync_status == "not_synced",
                or_(File.skipped_hash.is_(None), File.skipped_hash != File.content_hash),
            )
            .order_by(File.created_at, File.id)
            .limit(limit)
        ).scalars()
    )


def _due_if_pending(user_id: int) -> None:
    if waiting_files(user_id, limit=1):
        mark_due(user_id)
