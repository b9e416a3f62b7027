"""Sync requests and status: what views and the CLI call (``views → sync → tasks → runs``).

``request_sync`` tags the pending files with a new run and hands its id to ``tasks`` (the queue is
only a wake-up; the database is the source of truth). The run itself executes in
``services/runs.py`` and each file in ``services/transfer.py``, which also holds the file state
machine.

Decisions worth knowing:

- ``request_sync`` while a run is queued/running returns that run (a double click on Sync All
  shows its progress); a one-file run (retry, conflict resolution) then raises ``Conflict``.
- A conflict resolved with ``skip`` goes back to ``not_synced`` with ``SKIPPED_NOTE`` and
  ``skipped_hash`` = its content hash; Sync All
  leaves such files alone until the user retries or replaces them. OneDrive's copy is untouched
  and our recorded baseline (eTag/cTag) is kept, so the next upload of a new local version asks
  again if OneDrive's copy still differs from what we last synced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import and_, func, or_, update

from .. import events, tasks
from ..extensions import db
from ..graph.types import DriveItem
from ..models import File, Integration, SyncRun, utcnow
from . import autosync, library
from .errors import Conflict, NotFound, ServiceError, ValidationError
from .runs import ACTIVE_RUN_STATUSES
from .transfer import (
    PENDING_STATUSES,
    changed,
    files_of,
    load_integration,
    recover_stale_claims,
    synced_fields,
)

logger = logging.getLogger(__name__)

RESOLVE_ACTIONS = ("keep_both", "replace", "skip")
SKIPPED_NOTE = "Skipped: OneDrive keeps its own copy. Retry or replace the file to sync it."


class NothingToSync(ServiceError):
    """Every file is already on OneDrive (or waiting for a conflict decision)."""


# -- status of files -------------------------------------------------------------------------------


def update_sync_status(
    user_id: int,
    file_id: int,
    status: str,
    *,
    expected: str | Sequence[str] | None = None,
    commit: bool = True,
    **fields: Any,
) -> bool:
    """Move the owner's file to ``status`` if it is in ``expected``; return whether it moved."""
    stmt = files_of(user_id).where(File.id == file_id)
    if expected is not None:
        allowed = (expected,) if isinstance(expected, str) else tuple(expected)
        stmt = stmt.where(File.onedrive_sync_status.in_(allowed))
    moved = changed(stmt.values(onedrive_sync_status=status, **fields)) == 1
    if commit:
        db.session.commit()
    return moved


def mark_for_sync(user_id: int, file_ids: Iterable[int]) -> int:
    """Queue the owner's files for the next sync (error or skipped → not_synced); return count."""
    ids = list(file_ids)
    if not ids:
        return 0
    moved = changed(
        files_of(user_id)
        .where(File.id.in_(ids), File.onedrive_sync_status.in_(PENDING_STATUSES))
        .values(onedrive_sync_status="not_synced", onedrive_error=None, onedrive_note=None)
    )
    db.session.commit()
    return int(moved)


def _pending_query(user_id: int) -> Any:
    return db.select(File).where(
        File.owner_id == user_id,
        File.onedrive_sync_status.in_(PENDING_STATUSES),
        or_(File.skipped_hash.is_(None), File.skipped_hash != File.content_hash),
    )


def pending_files(user_id: int, limit: int = 100) -> list[File]:
    """Return up to ``limit`` of the owner's files waiting for Sync All, oldest first."""
    return list(
        db.session.execute(
            _pending_query(user_id).order_by(File.created_at, File.id).limit(limit)
        ).scalars()
    )


def link_to_item(user_id: int, file_id: int, item: DriveItem, content_hash: str) -> bool:
    """Mark the owner's unsynced file as synced to ``item`` (identical on OneDrive)."""
    return update_sync_status(
        user_id, file_id, "synced", expected="not_synced", **synced_fields(item, content_hash)
    )


# -- requesting work -------------------------------------------------------------------------------


def _active_run(user_id: int) -> SyncRun | None:
    return db.session.execute(
        db.select(SyncRun)
        .where(SyncRun.user_id == user_id, SyncRun.status.in_(ACTIVE_RUN_STATUSES))
        .order_by(SyncRun.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _abandoned(run: SyncRun) -> bool:
    """Return whether an active run looks dead: old, and none of its files moved lately."""
    stale = timedelta(seconds=current_app.config["SYNC_STALE_SECONDS"])
    now = utcnow()
    if (run.started_at or run.created_at) > now - stale:
        return False
    fresh = db.session.execute(
        db.select(func.count())
        .select_from(File)
        .where(
            File.owner_id == run.user_id,
            File.sync_run_id == run.id,
            or_(
                and_(File.onedrive_sync_status == "syncing", File.heartbeat_at >= now - stale),
                File.onedrive_synced_at >= now - stale,
            ),
        )
    ).scalar_one()
    return fresh == 0


def _create_run(user_id: int, ids: list[int], sizes: int, *, statuses: tuple[str, ...]) -> SyncRun:
    run = SyncRun(user_id=user_id, status="queued", total=len(ids), bytes_total=sizes)
    db.session.add(run)
    db.session.flush()
    values: dict[str, Any] = {"sync_run_id": run.id, "bytes_sent": 0}
    if statuses == PENDING_STATUSES:
        # error → not_synced now, so the run only ever takes not_synced files (idempotent).
        values |= {"onedrive_sync_status": "not_synced", "onedrive_error": None}
    tagged = changed(
        files_of(user_id)
        .where(File.id.in_(ids), File.onedrive_sync_status.in_(statuses))
        .values(**values)
    )
    run.total = int(tagged)
    db.session.commit()
    return run


def _enqueue(run: SyncRun, user_id: int, resolve: str | None = None) -> SyncRun:
    run_id = run.id
    try:
        tasks.enqueue_run(run_id, user_id, resolve=resolve)
    except Exception:
        logger.exception("could not queue sync run %s", run_id)
        db.session.rollback()
        db.session.execute(
            update(SyncRun)
            .where(SyncRun.id == run_id, SyncRun.user_id == user_id, SyncRun.status == "queued")
            .values(
                status="failed", error="Could not start the sync; try again.", finished_at=utcnow()
            )
        )
        db.session.commit()
        raise ServiceError("Could not start the sync; try again in a moment.") from None
    db.session.expire_all()
    fresh = db.session.get(SyncRun, run_id)
    assert fresh is not None  # noqa: S101 - the run was committed above
    return fresh


def _serialise_requests(integration_id: int) -> None:
    """Hold the user's integration row until commit, so two requests never both start a run.

    An UPDATE that changes nothing rather than ``SELECT … FOR UPDATE``: PostgreSQL locks the row
    either way, and SQLite, which ignores FOR UPDATE, takes its write lock here, so the reads
    that follow see a run another worker's request has just committed (two debounced wake-ups
    of one user on a Celery worker with threads).
    """
    db.session.execute(
        update(Integration)
        .where(Integration.id == integration_id)
        .values(status=Integration.status)
        .execution_options(synchronize_session=False)
    )


def request_sync(user_id: int, file_ids: Sequence[int] | None = None) -> SyncRun:
    """Queue a run over the owner's pending files (or ``file_ids``) and return it.

    Raise NotConnected / ReauthRequired without a usable integration, ``NotFound`` for ids that
    are not the owner's, ``NothingToSync`` when nothing is pending. While a run is active, Sync All
    returns it and a one-file request raises ``Conflict``.
    """
    integration = load_integration(user_id)
    recover_stale_claims(user_id)  # a dead worker's files are pending again, not "syncing"
    _serialise_requests(integration.id)
    active = _active_run(user_id)
    if active is not None and _abandoned(active):
        logger.warning("sync run %s of user %s was abandoned; closing it", active.id, user_id)
        active.status, active.finished_at = "failed", utcnow()
        active.error = "The sync was interrupted."
        db.session.commit()
        active = None
    if active is not None:
        if file_ids is not None:
            raise Conflict("A sync is already running; try again when it has finished.")
        db.session.commit()
        return active
    query = _pending_query(user_id)
    if file_ids is not None:
        wanted = set(file_ids)
        found = db.session.execute(
            db.select(func.count())
            .select_from(File)
            .where(File.owner_id == user_id, File.id.in_(wanted))
        ).scalar_one()
        if found != len(wanted):
            db.session.rollback()
            raise NotFound("That file does not exist.")
        # An explicit request ignores a previous "skip".
        query = db.select(File).where(
            File.owner_id == user_id,
            File.id.in_(wanted),
            File.onedrive_sync_status.in_(PENDING_STATUSES),
        )
    limit = current_app.config["SYNC_BATCH_LIMIT"]
    rows = db.session.execute(
        query.with_only_columns(File.id, File.size).order_by(File.created_at, File.id).limit(limit)
    ).all()
    if not rows:
        db.session.rollback()
        raise NothingToSync("Nothing to sync: every file is already on OneDrive.")
    run = _create_run(
        user_id, [r.id for r in rows], sum(r.size for r in rows), statuses=PENDING_STATUSES
    )
    logger.info("user %s queued sync run %s (%d files)", user_id, run.id, run.total)
    return _enqueue(run, user_id)


def retry_file(user_id: int, file_id: int) -> SyncRun:
    """Queue a one-file run for the owner's failed file."""
    f = library.get_file(user_id, file_id)
    if f.onedrive_sync_status != "error":
        raise Conflict("Only a file that failed to sync can be retried.")
    return request_sync(user_id, [file_id])


def resolve_conflict(user_id: int, file_id: int, action: str) -> SyncRun | None:
    """Resolve the owner's conflicted file: ``keep_both``, ``replace`` or ``skip``.

    ``keep_both`` uploads this file under a new name (OneDrive picks it) and tracks that copy;
    ``replace`` overwrites OneDrive's copy; both run as a one-file run, which is returned.
    ``skip`` leaves OneDrive's copy alone and parks the file (see the module docstring).
    """
    if action not in RESOLVE_ACTIONS:
        raise ValidationError({"action": "Choose keep both, replace or skip."})
    f = library.get_file(user_id, file_id)
    if f.onedrive_sync_status != "conflict":
        raise Conflict("This file is not in conflict.")
    if action == "skip":
        if not update_sync_status(
            user_id,
            file_id,
            "not_synced",
            expected="conflict",
            onedrive_error=None,
            onedrive_note=SKIPPED_NOTE,
            skipped_hash=f.content_hash,
        ):
            raise Conflict("This file is not in conflict.")
        events.conflict_resolved.send(None, user_id=user_id, file_id=file_id, action=action)
        db.session.commit()
        logger.info("user %s skipped the conflict of file %s", user_id, file_id)
        return None
    _serialise_requests(load_integration(user_id).id)
    if _active_run(user_id) is not None:
        raise Conflict("A sync is already running; try again when it has finished.")
    run = _create_run(user_id, [f.id], f.size, statuses=("conflict",))
    if not run.total:
        raise Conflict("This file is not in conflict.")
    run.resolve = action  # stored: a run queued again (lost message, dead worker) keeps it
    events.conflict_resolved.send(None, user_id=user_id, file_id=file_id, action=action)
    db.session.commit()
    return _enqueue(run, user_id, resolve=action)


# -- changes made in OneDrive (services/changes.py decides the states) -----------------------------

_FORGET_ITEM = {
    "onedrive_id": None,
    "onedrive_etag": None,
    "onedrive_ctag": None,
    "onedrive_path": None,
    "onedrive_web_url": None,
    "onedrive_name": None,
    "synced_content_hash": None,
    "upload_url": None,
    "upload_expires_at": None,
    "bytes_sent": 0,
    "onedrive_error": None,
    "onedrive_note": None,
    "skipped_hash": None,
}


def keep_library_version(user_id: int, file_id: int) -> SyncRun | None:
    """OneDrive has a newer version and the user keeps the library's: replace OneDrive's copy.

    The same one-file run as a conflict's *Replace* (the decision is stored on the run).
    """
    f = library.get_file(user_id, file_id)
    if f.onedrive_sync_status != "remote_changed":
        raise Conflict("OneDrive has no newer version of this file.")
    _serialise_requests(load_integration(user_id).id)
    if _active_run(user_id) is not None:
        raise Conflict("A sync is already running; try again when it has finished.")
    moved = update_sync_status(
        user_id, file_id, "conflict", expected="remote_changed", commit=False
    )
    if not moved:
        raise Conflict("OneDrive has no newer version of this file.")
    run = _create_run(user_id, [f.id], f.size, statuses=("conflict",))
    if not run.total:
        raise Conflict("OneDrive has no newer version of this file.")
    run.resolve = "replace"
    events.conflict_resolved.send(None, user_id=user_id, file_id=file_id, action="keep_library")
    db.session.commit()
    return _enqueue(run, user_id, resolve="replace")


def upload_again(user_id: int, file_id: int) -> File:
    """Upload a file deleted in OneDrive (or kept only in the library) again, as a new item."""
    f = library.get_file(user_id, file_id)
    if not update_sync_status(
        user_id,
        file_id,
        "not_synced",
        expected=("remote_deleted", "local_only"),
        commit=False,
        **_FORGET_ITEM,
    ):
        raise Conflict("This file is not deleted in OneDrive.")
    autosync.mark_due(user_id)  # automatic sync takes it (Sync All does in any case)
    events.conflict_resolved.send(None, user_id=user_id, file_id=file_id, action="upload_again")
    db.session.commit()
    db.session.refresh(f)
    return f


def keep_only_in_library(user_id: int, file_id: int) -> File:
    """Keep a file deleted in OneDrive only in the library: no sync uploads it until asked."""
    f = library.get_file(user_id, file_id)
    if not update_sync_status(
        user_id, file_id, "local_only", expected="remote_deleted", commit=False, **_FORGET_ITEM
    ):
        raise Conflict("This file is not deleted in OneDrive.")
    events.conflict_resolved.send(None, user_id=user_id, file_id=file_id, action="keep_only")
    db.session.commit()
    db.session.refresh(f)
    return f


# -- reading progress ------------------------------------------------------------------------------


def run_status(user_id: int, run_id: int | None = None) -> SyncRun | None:
    """Return the owner's run ``run_id``, or their latest run, or None."""
    query = db.select(SyncRun).where(SyncRun.user_id == user_id)
    if run_id is not None:
        query = query.where(SyncRun.id == run_id)
    return db.session.execute(query.order_by(SyncRun.id.desc()).limit(1)).scalar_one_or_none()


def file_progress(user_id: int, run_id: int) -> list[File]:
    """Return the run's files (with ``bytes_sent``) in one statement, whatever the library size."""
    return list(
        db.session.execute(
            db.select(File)
            .where(File.owner_id == user_id, File.sync_run_id == run_id)
            .order_by(File.id)
        ).scalars()
    )
