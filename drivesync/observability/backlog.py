"""The sync backlog across all users: two counts, for the metrics gauges.

On PostgreSQL the app role sees only the scoped user's rows (row-level security), so the counts
come from ``drivesync_sync_backlog()``, a ``SECURITY DEFINER`` function that returns two numbers
and nothing else (migration ``b3c1f0a9e2d4``). SQLite has no RLS: the same counts, directly.
"""

from __future__ import annotations

from sqlalchemy import text

from ..extensions import db

ACTIVE_RUN_STATUSES = ("queued", "running")
DUE_FILE_STATUSES = ("not_synced", "error")

_SQLITE = text(
    "SELECT (SELECT count(*) FROM sync_runs WHERE status IN ('queued', 'running')), "
    "(SELECT count(*) FROM files WHERE onedrive_sync_status IN ('not_synced', 'error'))"
)
_POSTGRESQL = text("SELECT active_runs, due_files FROM drivesync_sync_backlog()")


def sync_backlog() -> tuple[int, int]:
    """Return (sync runs queued or running, files waiting to sync) over every user."""
    query = _POSTGRESQL if db.engine.dialect.name == "postgresql" else _SQLITE
    try:
        row = db.session.execute(query).one()
    finally:
        db.session.rollback()  # leave no transaction open on the scrape's session
    return int(row[0]), int(row[1])
