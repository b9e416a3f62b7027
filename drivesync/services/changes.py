"""Changes made on OneDrive's side: when to check the sync folder's delta feed.

:func:`request_check` asks for a check soon (the settings page was opened, a change
notification arrived): it moves ``integrations.delta_due_at`` to now, commits, and sends a
wake-up; the scheduler's per-user reconcile runs the check. The due time is the truth: a lost
wake-up only delays the check to the next tick.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, update

from .. import tasks
from ..extensions import db
from ..models import Integration, utcnow
from .transfer import changed

logger = logging.getLogger(__name__)

REQUEST_GAP = timedelta(seconds=60)  # a page view asks for a check at most once a minute


def request_check(
    user_id: int, now: datetime | None = None, *, min_gap: timedelta = REQUEST_GAP
) -> bool:
    """Make a delta check of the user's folder due now unless one ran within ``min_gap``.

    Commits, then wakes the scheduler. Return whether a check was scheduled (False when not
    connected, reconnect-needed, paused, already due, or checked too recently). Several calls
    in a row coalesce into the one due time, so a burst of notifications makes one check.
    """
    now = now or utcnow()
    moved = changed(
        update(Integration)
        .where(
            Integration.user_id == user_id,
            Integration.status == "active",
            Integration.paused_at.is_(None),
            or_(Integration.delta_due_at.is_(None), Integration.delta_due_at > now),
            or_(
                Integration.delta_checked_at.is_(None),
                Integration.delta_checked_at <= now - min_gap,
            ),
        )
        .values(delta_due_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if moved:
        try:
            tasks.wake_user(user_id, 0)
        except Exception:  # the due time is stored: the next tick runs the check
            logger.warning("changes: could not wake the scheduler for user %s", user_id)
    return bool(moved)
