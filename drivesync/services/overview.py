"""What the OneDrive settings page shows, read in a fixed number of queries.

The page and its progress partial must cost the same with 10 files or 10,000: counts come from
one grouped query, lists are limited, and nothing is loaded per file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import case, func
from sqlalchemy.engine import Row

from ..extensions import db
from ..models import File, Integration, SyncRun, utcnow
from . import changes, imports, sync
from .integrations import get_integration

# Files the pending list shows, in the order a user wants to see them.
LISTED = (
    "syncing",
    "error",
    "conflict",
    "remote_changed",
    "remote_deleted",
    "not_synced",
    "local_only",
)
# Only what the list shows, as plain rows: hydrating whole ORM objects costs more than the query.
_LIST_COLUMNS = (
    File.id,
    File.original_name,
    File.size,
    File.mime_type,
    File.onedrive_sync_status,
    File.onedrive_error,
    File.onedrive_note,
    File.bytes_sent,
    File.failure_kind,  # the next-try line of a failed file (services/failures.py)
    File.next_attempt_at,
    File.sync_attempts,
)
# A scheduled retry this close keeps the settings page polling (``Overview.retry_soon``).
RETRY_WATCH = timedelta(minutes=10)
_ORDER = case({s: i for i, s in enumerate(LISTED)}, value=File.onedrive_sync_status)


@dataclass
class Overview:
    """Everything the settings page needs about one user."""

    integration: Integration | None
    counts: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    pending: list[Row[Any]] = field(default_factory=list)
    run: SyncRun | None = None
    importing: set[int] = field(default_factory=set)  # files whose OneDrive version is coming
    remote: changes.RemoteStatus | None = None  # when and how OneDrive was last checked

    @property
    def pending_total(self) -> int:
        """Return how many files Sync All would take (not synced or failed, not skipped)."""
        return self.counts.get("not_synced", 0) + self.counts.get("error", 0) - self.skipped

    @property
    def listed_total(self) -> int:
        """Return how many files the pending list could show."""
        return sum(self.counts.get(s, 0) for s in LISTED)

    @property
    def running(self) -> bool:
        """Return whether a sync run is queued or under way."""
        return self.run is not None and not self.run.finished

    @property
    def run_bytes_done(self) -> int:
        """Return the run's bytes so far, counting files still uploading (listed first)."""
        if self.run is None:
            return 0
        done = self.run.bytes_done
        if not self.run.finished:
            done += sum(f.bytes_sent or 0 for f in self.pending
                        if f.onedrive_sync_status == "syncing")  # fmt: skip
        return min(done, self.run.bytes_total) if self.run.bytes_total else done

    @property
    def run_percent(self) -> int:
        """Return the run's overall progress, 0 to 100, moving during a big upload too."""
        if self.run is None or self.run.finished or not self.run.bytes_total:
            return self.run.percent if self.run else 0
        return min(100, self.run_bytes_done * 100 // self.run.bytes_total)

    @property
    def autosync_soon(self) -> bool:
        """Return whether an automatic sync is about to start (the page then keeps polling):
        new files waiting for the debounce, or a listed file's scheduled retry coming soon."""
        i = self.integration
        if not (i and i.active and i.paused_at is None):
            return False
        return bool(i.autosync_due_at and i.autosync) or self.retry_soon

    @property
    def retry_soon(self) -> bool:
        """Return whether the scheduler retries a listed failed file within ``RETRY_WATCH``.

        The page then keeps polling, so a file that failed in an outage turns synced on screen
        once the scheduler has retried it, without a reload; a retry hours away is not watched.
        """
        horizon = utcnow() + RETRY_WATCH
        return any(
            f.onedrive_sync_status == "error"
            and f.next_attempt_at is not None
            and f.next_attempt_at <= horizon
            for f in self.pending
        )

    @property
    def waiting(self) -> int:
        """Return the files waiting for or in an upload (what the dashboard calls pending)."""
        return self.counts.get("not_synced", 0) - self.skipped + self.counts.get("syncing", 0)

    @property
    def quota_percent(self) -> int | None:
        """Return the share of the OneDrive quota in use, 0 to 100."""
        i = self.integration
        if not i or not i.quota_total:
            return None
        return min(100, round((i.quota_used or 0) * 100 / i.quota_total))


def overview(user_id: int, list_limit: int = 100) -> Overview:
    """Return the settings page's data for ``user_id`` (eight queries at most, any library)."""
    integration = get_integration(user_id)
    result = Overview(integration=integration)
    if integration is None:
        return result
    # The grouped count reads only the (owner_id, onedrive_sync_status) index.
    rows = db.session.execute(
        db.select(File.onedrive_sync_status, func.count())
        .where(File.owner_id == user_id)
        .group_by(File.onedrive_sync_status)
    ).all()
    result.counts = {status: n for status, n in rows}
    if result.counts.get("not_synced"):
        # Skipped files are not_synced ones; the index narrows the scan to those rows only.
        result.skipped = db.session.execute(
            db.select(func.count())
            .select_from(File)
            .where(
                File.owner_id == user_id,
                File.onedrive_sync_status == "not_synced",
                File.skipped_hash == File.content_hash,
            )
        ).scalar_one()
    if any(result.counts.get(s) for s in LISTED):
        result.pending = list(
            db.session.execute(
                db.select(*_LIST_COLUMNS)
                .where(File.owner_id == user_id, File.onedrive_sync_status.in_(LISTED))
                .order_by(_ORDER, File.original_name, File.id)
                .limit(list_limit)
            )
        )
    result.run = sync.run_status(user_id)
    result.importing = imports.versions_importing(user_id)
    result.remote = changes.status(user_id)
    return result
