"""Per-user storage quota (``USER_QUOTA_MB``; 0 means unlimited).

Usage is ``SUM(files.size)`` of the user's library. Two checks keep a user inside it:

- before any byte is stored: an upload whose ``Content-Length`` (or an import whose OneDrive
  ``size``) exceeds what is left is refused at once;
- while bytes stream in: a ``Meter`` counts every byte written to the request's incoming files
  and stops the stream once it passes the allowance (a chunked body, or a ``size`` that lied).
  The caller then discards the incoming files, so nothing partial stays on disk.

Two uploads racing each other can both pass the check and overshoot by at most one request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import func

from ..extensions import db
from ..formats import humansize
from ..models import File
from .errors import ServiceError

logger = logging.getLogger(__name__)

MB = 1024 * 1024


class QuotaExceeded(ServiceError):
    """An upload or import that would take the user past their storage quota."""

    status = 413


def _human(n: int) -> str:
    return humansize(n)  # the template filter too, so pages and messages agree


@dataclass(frozen=True)
class Usage:
    """How much of their quota a user has used (``quota`` None = unlimited)."""

    used: int
    quota: int | None

    @property
    def remaining(self) -> int | None:
        """Return the bytes left, or None when unlimited."""
        return None if self.quota is None else max(0, self.quota - self.used)

    @property
    def percent(self) -> int:
        """Return the share used, 0 to 100 (0 when unlimited)."""
        if not self.quota:
            return 0
        return min(100, int(self.used * 100 / self.quota))


def quota_bytes() -> int | None:
    """Return the configured per-user quota in bytes, or None when unlimited."""
    mb = int(current_app.config.get("USER_QUOTA_MB") or 0)
    return mb * MB if mb > 0 else None


def usage(user_id: int) -> Usage:
    """Return the user's storage use against their quota."""
    used = db.session.execute(
        db.select(func.coalesce(func.sum(File.size), 0)).where(File.owner_id == user_id)
    ).scalar_one()
    return Usage(used=int(used), quota=quota_bytes())


def refusal(needed: int, left: int) -> QuotaExceeded:
    """Return the error for an upload of ``needed`` bytes when only ``left`` remain."""
    total = quota_bytes() or 0
    return QuotaExceeded(
        f"This needs {_human(needed)} but only {_human(left)} of your {_human(total)} storage "
        "is left. Nothing was stored. Delete files you no longer need, then try again."
    )


def allowance(user_id: int, replacing_file_id: int | None = None) -> int | None:
    """Return how many bytes the user may add now (None = unlimited).

    A replacement frees the old version's bytes once it is stored, so they count as free.
    """
    if quota_bytes() is None:
        return None  # unlimited: no query
    left = usage(user_id).remaining
    if left is None:
        return None
    if replacing_file_id is not None:
        old = db.session.execute(
            db.select(File.size).where(File.id == replacing_file_id, File.owner_id == user_id)
        ).scalar_one_or_none()
        left += int(old or 0)
    return left


class Meter:
    """Counts bytes written across one request's (or one import's) incoming files.

    ``limit`` None means unlimited. ``take`` raises ``QuotaExceeded`` before the byte that
    would pass the limit is written.
    """

    def __init__(self, limit: int | None, error: ServiceError | None = None) -> None:
        self.limit = limit
        self.used = 0
        self._error = error

    def take(self, n: int) -> None:
        """Account for ``n`` more bytes, or raise when they would pass the limit."""
        if self.limit is not None and self.used + n > self.limit:
            raise self._error or refusal(self.used + n, self.limit)
        self.used += n


def check_incoming(user_id: int, size: int | None, replacing_file_id: int | None = None) -> Meter:
    """Refuse ``size`` bytes (when known) that do not fit; return a meter for the stream."""
    left = allowance(user_id, replacing_file_id)
    if left is not None and size is not None and size > left:
        raise refusal(size, left)
    return Meter(left)


def check_import(user_id: int, size: int | None, replacing_file_id: int | None = None) -> Meter:
    """Refuse an import larger than the upload limit or the quota; return a meter for it.

    ``replacing_file_id``: the import is a new version of that file (its bytes count as free).

    The meter enforces the smaller of both while the download streams, because the size
    OneDrive reports may not match the body it sends.
    """
    max_upload = int(current_app.config["MAX_UPLOAD_MB"]) * MB
    too_big = ServiceError(
        f"This OneDrive file is larger than the {_human(max_upload)} upload limit, "
        "so it was not imported."
    )
    too_big.status = 413
    if size is not None and size > max_upload:
        raise too_big
    meter = check_incoming(user_id, size, replacing_file_id)
    if meter.limit is None or meter.limit >= max_upload:
        return Meter(max_upload, too_big)
    return meter
