"""Failure notices: one banner on every page while something needs the user, one e-mail per episode.

A user has a *problem* while their connection needs reconnecting, or while one of their files has
kept failing for longer than ``FAILURE_NOTICE_HOURS`` (``files.failing_since``, kept across
retries, cleared when the file syncs). An *episode* starts when a problem appears and ends when
there is none left; its start and whether it was notified live on the integration
(``notice_since``, ``notice_sent_at``). The scheduler calls :func:`evaluate` for users whose
episode may start, needs its notice, or may have ended; the claim on ``notice_sent_at`` is a
conditional UPDATE, so two schedulers cannot both send the e-mail of one episode.

The banner reads the live state (:func:`banner`), so it disappears as soon as things work again;
only the e-mail depends on the scheduler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import func, update

from .. import mail
from ..extensions import db
from ..models import File, Integration, User, utcnow
from .integrations import PROVIDER
from .transfer import changed

logger = logging.getLogger(__name__)

REAUTH = "reauth"
FAILING = "failing"


@dataclass(frozen=True)
class Notice:
    """What the banner and the e-mail say about one user's problem."""

    kind: str  # REAUTH | FAILING
    failing: int = 0  # files failing for longer than the threshold
    reason: str | None = None

    @property
    def subject(self) -> str:
        """Return the e-mail subject."""
        if self.kind == REAUTH:
            return "drivesync: reconnect OneDrive to keep your files in sync"
        return "drivesync: some files have not reached your OneDrive"

    @property
    def text(self) -> str:
        """Return one plain sentence for the banner and the e-mail body."""
        if self.kind == REAUTH:
            return (
                "OneDrive needs you to sign in again. Nothing is copied to OneDrive until you "
                "reconnect; your files are safe in your library."
            )
        n = self.failing
        hours = threshold_hours()
        return (
            f"{n} file{'s have' if n != 1 else ' has'} not reached OneDrive for more than "
            f"{hours:g} hours. The OneDrive settings page says why and what you can do."
        )


def threshold_hours() -> float:
    """Return how long a file may keep failing before the user is told."""
    return float(current_app.config["FAILURE_NOTICE_HOURS"])


def current(user_id: int, now: datetime | None = None) -> Notice | None:
    """Return the user's problem right now, or None (two indexed queries at most)."""
    integration = db.session.execute(
        db.select(Integration.status, Integration.status_reason).where(
            Integration.user_id == user_id, Integration.provider == PROVIDER
        )
    ).first()
    if integration is None:
        return None
    if integration.status == "needs_reauth":
        return Notice(REAUTH, reason=integration.status_reason)
    cutoff = (now or utcnow()) - timedelta(hours=threshold_hours())
    failing = db.session.execute(
        db.select(func.count())
        .select_from(File)
        .where(
            File.owner_id == user_id,
            File.onedrive_sync_status == "error",
            File.failing_since < cutoff,
        )
    ).scalar_one()
    return Notice(FAILING, failing=int(failing)) if failing else None


def banner(user_id: int) -> Notice | None:
    """Return what the banner on every page shows the user, or None."""
    return current(user_id)


def evaluate(user_id: int, now: datetime | None = None) -> Notice | None:
    """Open, notify or close the user's failure episode; return the problem, if any.

    Exactly one e-mail per episode: the first call that sees an open, un-notified episode claims
    it (conditional UPDATE) and sends; a new episode starts only after one has ended.
    """
    now = now or utcnow()
    problem = current(user_id, now)
    mine = update(Integration).where(
        Integration.user_id == user_id, Integration.provider == PROVIDER
    )
    if problem is None:
        ended = changed(
            mine.where(Integration.notice_since.is_not(None)).values(
                notice_since=None, notice_sent_at=None
            )
        )
        db.session.commit()
        if ended:
            logger.info("user %s: failure episode over", user_id)
        return None
    db.session.execute(mine.where(Integration.notice_since.is_(None)).values(notice_since=now))
    claimed = changed(mine.where(Integration.notice_sent_at.is_(None)).values(notice_sent_at=now))
    db.session.commit()
    if claimed:
        _send_episode_mail(user_id, problem.subject, problem.text)
    return problem


def _send_episode_mail(user_id: int, subject: str, body: str) -> None:
    """Send the one e-mail of a failure episode to the user (``drivesync/mail.py``).

    Without mail configured (production without ``DRIVESYNC_SMTP_URL``) the banner is the only
    notice, and the log says so.
    """
    user = db.session.get(User, user_id)
    if user is None:
        return
    if not mail.mail_enabled():
        logger.info("failure notice for user %s not mailed (no mail configured)", user_id)
        return
    mail.send(user.email, subject, body)
    logger.info("failure notice mailed to user %s: %s", user_id, subject)
