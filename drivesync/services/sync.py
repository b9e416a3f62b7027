"""The sync engine: the file state machine, sync_file(), execute_run(), retries, recovery.

States (design.md): ``not_synced → syncing → synced | error``; ``error → syncing`` (retry, via
``not_synced`` when a run takes the file); ``synced → not_synced`` (library.replace_file);
``→ conflict`` when both sides changed. Every transition is a conditional UPDATE checked by its
rowcount, so two workers never upload the same file twice; the claim's ``claimed_at`` doubles as
its token, so a worker whose claim was recovered as stale cannot overwrite the new owner's result.

Where the work runs is ``tasks.py``'s business; this module only takes ids and runs inside an app
context. The engine talks to OneDrive through a small ``Drive`` protocol: ``GraphDrive`` adapts
the real Graph layer, tests use ``tests.fakes.FakeDrive``.

Decisions worth knowing:

- ``request_sync`` while a run is queued/running returns that run (a double click on Sync All
  shows its progress); a one-file run (retry, conflict resolution) then raises ``Conflict``.
- A conflict resolved with ``skip`` goes back to ``not_synced`` with ``SKIPPED_NOTE`` and
  ``skipped_hash`` = its content hash; Sync All
  leaves such files alone until the user retries or replaces them. OneDrive's copy is untouched
  and our recorded baseline (eTag/cTag) is kept, so the next upload of a new local version asks
  again if OneDrive's copy still differs from what we last synced.
- Each worker thread of a run builds its own Drive (own HTTP sessions, own token provider bound to
  its own database session).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import import_module
from queue import Empty, SimpleQueue
from typing import Any, Protocol

from flask import Flask, current_app
from sqlalchemy import and_, func, or_, update

from ..extensions import db
from ..graph.client import GraphClient
from ..graph.errors import (
    AuthError,
    FileTooLargeError,
    GraphError,
    NameNotAllowedError,
)
from ..graph.names import MAX_FILE_SIZE, validate_name
from ..graph.types import DriveItem
from ..graph.upload import (
    DEFAULT_FRAGMENT,
    ProgressCallback,
    ResumeState,
    SessionCallback,
    UploadResult,
    upload_file,
)
from ..models import File, Integration, SyncRun, utcnow
from ..scope import user_scope
from . import library
from .errors import Conflict, NotFound, ServiceError, ValidationError
from .storage import LocalStorage

logger = logging.getLogger(__name__)

PENDING_STATUSES = ("not_synced", "error")
ACTIVE_RUN_STATUSES = ("queued", "running")
RESOLVE_ACTIONS = ("keep_both", "replace", "skip")
SERVICE_MODIFIED_NOTE = (
    "OneDrive changed this Office file after upload (normal on OneDrive for Business)"
)
UNVERIFIED_NOTE = "OneDrive did not report a checksum for this file, so it was not verified."
REMOTE_CHANGED_NOTE = "Changed on OneDrive since the last sync; the OneDrive copy was kept."
SKIPPED_NOTE = "Skipped: OneDrive keeps its own copy. Retry or replace the file to sync it."
MISSING_MESSAGE = "The stored copy of this file is missing; upload it again."
BOTH_CHANGED_MESSAGE = (
    "Both this file and its OneDrive copy changed since the last sync. Choose which to keep."
)
UNEXPECTED_MESSAGE = "Something went wrong while syncing this file; try again."
PROGRESS_INTERVAL = 0.5  # seconds between bytes_sent writes for one file
MAX_ERROR = 500


class NothingToSync(ServiceError):
    """Every file is already on OneDrive (or waiting for a conflict decision)."""


class Drive(Protocol):
    """What the engine needs from OneDrive: upload, read an item, read a child by name."""

    drive_type: str

    def upload(
        self,
        local_path: str,
        parent_id: str,
        name: str,
        *,
        conflict_behavior: str,
        if_match: str | None = None,
        fragment_size: int = DEFAULT_FRAGMENT,
        modified_at: datetime | None = None,
        on_progress: ProgressCallback | None = None,
        resume: ResumeState | None = None,
        on_session: SessionCallback | None = None,
    ) -> UploadResult: ...

    def get_item(self, item_id: str) -> DriveItem: ...

    def get_child(self, parent_id: str, name: str) -> DriveItem: ...

    def quota(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


DriveFactory = Callable[[int], Drive]


class GraphDrive:
    """Adapt ``GraphClient`` + ``upload_file`` to the ``Drive`` protocol."""

    def __init__(self, client: GraphClient, drive_type: str | None = "personal") -> None:
        self.client = client
        self.drive_type = drive_type or "personal"

    def upload(
        self,
        local_path: str,
        parent_id: str,
        name: str,
        *,
        conflict_behavior: str,
        if_match: str | None = None,
        fragment_size: int = DEFAULT_FRAGMENT,
        modified_at: datetime | None = None,
        on_progress: ProgressCallback | None = None,
        resume: ResumeState | None = None,
        on_session: SessionCallback | None = None,
    ) -> UploadResult:
        """Upload ``local_path`` as ``name`` into ``parent_id`` and verify its hash."""
        return upload_file(
            self.client,
            local_path,
            parent_id,
            name,
            conflict_behavior=conflict_behavior,
            if_match=if_match,
            fragment_size=fragment_size,
            modified_at=modified_at,
            on_progress=on_progress,
            resume=resume,
            on_session=on_session,
        )

    def get_item(self, item_id: str) -> DriveItem:
        """Return the driveItem ``item_id``."""
        return self.client.get_item(item_id)

    def get_child(self, parent_id: str, name: str) -> DriveItem:
        """Return the child ``name`` of folder ``parent_id``."""
        return self.client.get_child(parent_id, name)

    def quota(self) -> dict[str, Any]:
        """Return the drive's quota (``used``, ``total`` … in bytes)."""
        return dict(self.client.drive().get("quota") or {})

    def close(self) -> None:
        """Close the client's HTTP sessions."""
        self.client.close()


def default_drive_factory(user_id: int) -> Drive:
    """Return a ``GraphDrive`` for the user's OneDrive integration (refreshing tokens as needed)."""
    from .integrations import graph_client_for

    client, integration = graph_client_for(user_id)
    return GraphDrive(client, integration.drive_type)


def drive_factory() -> DriveFactory:
    """Return the configured factory: ``SYNC_DRIVE_FACTORY`` (callable or "module:attr")."""
    configured = current_app.config.get("SYNC_DRIVE_FACTORY")
    if not configured:
        return default_drive_factory
    if callable(configured):
        return configured  # type: ignore[no-any-return]
    module, _, attr = str(configured).partition(":")
    factory = getattr(import_module(module), attr or "drive_factory")
    return factory  # type: ignore[no-any-return]


# -- small helpers ---------------------------------------------------------------------------------


class ReauthNeeded(Exception):
    """The user must reconnect OneDrive: stop the run, leave files not_synced."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Claim:
    """A claim on one file (``claimed_at`` is its token) and the row as it was when claimed."""

    file_id: int
    user_id: int
    claimed_at: datetime
    version: int
    name: str
    size: int
    stored_path: str
    content_hash: str
    quick_xor_hash: str
    updated_at: datetime
    onedrive_id: str | None
    onedrive_etag: str | None
    onedrive_ctag: str | None
    synced_content_hash: str | None
    upload_url: str | None = field(default=None, repr=False)  # a credential
    upload_expires_at: datetime | None = None


def _short(message: str) -> str:
    return message if len(message) <= MAX_ERROR else message[: MAX_ERROR - 1] + "…"


def _files(user_id: int) -> Any:
    return update(File).where(File.owner_id == user_id).execution_options(synchronize_session=False)


def _remote_hash(item: DriveItem) -> str | None:
    return ((item.get("file") or {}).get("hashes") or {}).get("quickXorHash")


def _remote_path(item: DriveItem) -> str | None:
    parent = (item.get("parentReference") or {}).get("path")
    name = item.get("name")
    if not parent or not name:
        return None
    # parentReference.path reads "/drive/root:/folder" (percent-decoded).
    _, _, tail = parent.partition(":")
    return f"{tail.rstrip('/')}/{name}" if tail else f"/{name}"


def _load_integration(user_id: int) -> Integration:
    """Return the user's active OneDrive integration or raise NotConnected / ReauthRequired."""
    from .integrations import NotConnected, require_integration

    integration = require_integration(user_id)
    if not integration.folder_id:
        raise NotConnected("The OneDrive folder is not set up yet: reconnect OneDrive.")
    return integration


def _storage() -> LocalStorage:
    return LocalStorage(current_app.config["STORAGE_DIR"])


def _fragment_size() -> int:
    return int(current_app.config.get("UPLOAD_FRAGMENT_MB", 10)) * 1024 * 1024


# -- seed functions --------------------------------------------------------------------------------


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
    stmt = _files(user_id).where(File.id == file_id)
    if expected is not None:
        allowed = (expected,) if isinstance(expected, str) else tuple(expected)
        stmt = stmt.where(File.onedrive_sync_status.in_(allowed))
    moved = db.session.execute(stmt.values(onedrive_sync_status=status, **fields)).rowcount == 1
    if commit:
        db.session.commit()
    return moved


def mark_for_sync(user_id: int, file_ids: Iterable[int]) -> int:
    """Queue the owner's files for the next sync (error or skipped → not_synced); return count."""
    ids = list(file_ids)
    if not ids:
        return 0
    moved = db.session.execute(
        _files(user_id)
        .where(File.id.in_(ids), File.onedrive_sync_status.in_(PENDING_STATUSES))
        .values(onedrive_sync_status="not_synced", onedrive_error=None, onedrive_note=None)
    ).rowcount
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


def recover_stale_claims(user_id: int) -> int:
    """Return the owner's claims whose heartbeat is too old (the worker died) to not_synced."""
    stale = int(current_app.config.get("SYNC_STALE_SECONDS", 300))
    cutoff = utcnow() - timedelta(seconds=stale)
    moved = int(
        db.session.execute(
            _files(user_id)
            .where(
                File.onedrive_sync_status == "syncing",
                or_(File.heartbeat_at.is_(None), File.heartbeat_at < cutoff),
            )
            # Keep upload_url: the next attempt resumes the session if it is still open.
            .values(onedrive_sync_status="not_synced", claimed_at=None, heartbeat_at=None)
        ).rowcount
    )
    db.session.commit()
    if moved:
        logger.warning("recovered %d stale sync claims of user %s", moved, user_id)
    return moved


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
    stale = timedelta(seconds=int(current_app.config.get("SYNC_STALE_SECONDS", 300)))
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
    tagged = db.session.execute(
        _files(user_id)
        .where(File.id.in_(ids), File.onedrive_sync_status.in_(statuses))
        .values(**values)
    ).rowcount
    run.total = int(tagged)
    db.session.commit()
    return run


def _enqueue(run: SyncRun, user_id: int, resolve: str | None = None) -> SyncRun:
    from .. import tasks

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


def request_sync(user_id: int, file_ids: Sequence[int] | None = None) -> SyncRun:
    """Queue a run over the owner's pending files (or ``file_ids``) and return it.

    Raise NotConnected / ReauthRequired without a usable integration, ``NotFound`` for ids that
    are not the owner's, ``NothingToSync`` when nothing is pending. While a run is active, Sync All
    returns it and a one-file request raises ``Conflict``.
    """
    integration = _load_integration(user_id)
    # Serialise requests of one user on PostgreSQL (SQLite writes are serialised anyway).
    db.session.execute(
        db.select(Integration.id).where(Integration.id == integration.id).with_for_update()
    )
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
    limit = int(current_app.config.get("SYNC_BATCH_LIMIT", 100))
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
        logger.info("user %s skipped the conflict of file %s", user_id, file_id)
        return None
    _load_integration(user_id)
    db.session.execute(
        db.select(Integration.id).where(Integration.user_id == user_id).with_for_update()
    )
    if _active_run(user_id) is not None:
        raise Conflict("A sync is already running; try again when it has finished.")
    run = _create_run(user_id, [f.id], f.size, statuses=("conflict",))
    if not run.total:
        raise Conflict("This file is not in conflict.")
    return _enqueue(run, user_id, resolve=action)


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


# -- executing a run -------------------------------------------------------------------------------

_global_lock = threading.Lock()
_global_slots: tuple[int, threading.BoundedSemaphore] | None = None


def _global_semaphore() -> threading.BoundedSemaphore:
    """Return the process-wide semaphore capping uploads across all runs."""
    global _global_slots
    size = int(current_app.config.get("SYNC_GLOBAL_CONCURRENCY", 16))
    with _global_lock:
        if _global_slots is None or _global_slots[0] != size:
            _global_slots = (size, threading.BoundedSemaphore(size))
        return _global_slots[1]


@dataclass
class _RunState:
    stop: threading.Event
    reauth_message: str | None = None


def execute_run(
    run_id: int,
    user_id: int,
    *,
    resolve: str | None = None,
    factory: DriveFactory | None = None,
) -> SyncRun | None:
    """Run a queued sync run to its end; safe to run twice (claims are conditional)."""
    with user_scope(user_id):
        try:
            return _execute_run(run_id, user_id, resolve, factory or drive_factory())
        finally:
            db.session.rollback()


def _execute_run(
    run_id: int, user_id: int, resolve: str | None, factory: DriveFactory
) -> SyncRun | None:
    recover_stale_claims(user_id)
    runs = update(SyncRun).where(SyncRun.id == run_id, SyncRun.user_id == user_id)
    started = db.session.execute(
        runs.where(SyncRun.status.in_(ACTIVE_RUN_STATUSES)).values(
            status="running", started_at=func.coalesce(SyncRun.started_at, utcnow())
        )
    ).rowcount
    db.session.commit()
    if not started:
        logger.info("sync run %s is finished or unknown; nothing to do", run_id)
        return run_status(user_id, run_id)
    from .integrations import NotConnected, ReauthRequired

    try:
        folder_id = _load_integration(user_id).folder_id
    except (NotConnected, ReauthRequired) as exc:
        return _finish_run(run_id, user_id, "stopped", exc.message)
    assert folder_id is not None  # noqa: S101 - _load_integration checks it
    status = "conflict" if resolve else "not_synced"
    ids = list(
        db.session.execute(
            db.select(File.id)
            .where(
                File.owner_id == user_id,
                File.sync_run_id == run_id,
                File.onedrive_sync_status == status,
            )
            .order_by(File.id)
        ).scalars()
    )
    db.session.commit()
    state = _RunState(threading.Event())
    if ids:
        _run_files(current_app._get_current_object(), run_id, user_id, ids, folder_id,
                   resolve, factory, state)  # fmt: skip
    if state.reauth_message:
        return _finish_run(run_id, user_id, "stopped", state.reauth_message)
    _refresh_quota(user_id, factory)
    return _finish_run(run_id, user_id, "done", None)


def _refresh_quota(user_id: int, factory: DriveFactory) -> None:
    """Record the drive's quota after a run, so the dashboard's storage bar is current.

    Best effort: a failure here must not turn a successful run into a failed one.
    """
    drive = None
    try:
        drive = factory(user_id)
        quota = drive.quota()
    except (GraphError, ServiceError, OSError) as exc:
        logger.info("quota refresh after a run of user %s skipped: %s", user_id,
                    type(exc).__name__)  # fmt: skip
        db.session.rollback()
        return
    finally:
        if drive is not None:
            drive.close()
    if "used" in quota or "total" in quota:
        db.session.execute(
            update(Integration)
            .where(Integration.user_id == user_id, Integration.provider == "onedrive")
            .values(quota_used=quota.get("used"), quota_total=quota.get("total"))
        )
        db.session.commit()


def _finish_run(run_id: int, user_id: int, status: str, error: str | None) -> SyncRun | None:
    now = utcnow()
    db.session.execute(
        update(SyncRun)
        .where(SyncRun.id == run_id, SyncRun.user_id == user_id)
        .values(status=status, error=_short(error) if error else None, finished_at=now)
    )
    db.session.execute(
        update(Integration)
        .where(Integration.user_id == user_id, Integration.provider == "onedrive")
        .values(last_sync_at=now)
    )
    db.session.commit()
    run = run_status(user_id, run_id)
    if run is not None:
        logger.info("sync run %s %s: %d ok, %d failed of %d", run_id, status, run.succeeded,
                    run.failed, run.total)  # fmt: skip
    return run


def _run_files(
    app: Flask,
    run_id: int,
    user_id: int,
    ids: list[int],
    folder_id: str,
    resolve: str | None,
    factory: DriveFactory,
    state: _RunState,
) -> None:
    queue: SimpleQueue[int] = SimpleQueue()
    for file_id in ids:
        queue.put(file_id)
    workers = max(1, min(int(app.config.get("SYNC_CONCURRENCY", 4)), len(ids)))
    with app.app_context():
        slots = _global_semaphore()

    def work() -> None:
        with app.app_context(), user_scope(user_id):
            drive: Drive | None = None
            try:
                while not state.stop.is_set():
                    try:
                        file_id = queue.get_nowait()
                    except Empty:
                        return
                    if drive is None:
                        drive = _make_drive(factory, user_id, state)
                        if drive is None:
                            return
                    with slots:
                        if state.stop.is_set():
                            return
                        _sync_in_run(file_id, user_id, drive, run_id, folder_id, resolve, state)
            finally:
                if drive is not None:
                    drive.close()
                db.session.remove()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"sync-run-{run_id}") as pool:
        futures = [pool.submit(work) for _ in range(workers)]
    for future in futures:
        if (exc := future.exception()) is not None:
            logger.error("sync worker of run %s crashed: %s", run_id, type(exc).__name__)


def _make_drive(factory: DriveFactory, user_id: int, state: _RunState) -> Drive | None:
    from .integrations import NotConnected, ReauthRequired

    try:
        return factory(user_id)
    except (AuthError, ReauthRequired, NotConnected) as exc:
        message = exc.human_message() if isinstance(exc, GraphError) else exc.message
        _stop_for_reauth(user_id, state, message)
        return None


def _stop_for_reauth(user_id: int, state: _RunState, message: str) -> None:
    first = not state.stop.is_set()
    state.reauth_message = state.reauth_message or message
    state.stop.set()
    if first:
        from .integrations import mark_needs_reauth

        try:
            mark_needs_reauth(user_id, message)
        except Exception:
            logger.exception("could not mark the integration of user %s for reauth", user_id)
            db.session.rollback()


def _sync_in_run(
    file_id: int,
    user_id: int,
    drive: Drive,
    run_id: int,
    folder_id: str,
    resolve: str | None,
    state: _RunState,
) -> None:
    try:
        outcome = sync_file(
            file_id, user_id, drive, run_id=run_id, folder_id=folder_id, resolve=resolve
        )
    except ReauthNeeded as exc:
        _stop_for_reauth(user_id, state, exc.message)
        return
    logger.debug("file %s in run %s: %s", file_id, run_id, outcome.status)


# -- one file --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncOutcome:
    """How ``sync_file`` left a file: its status, its size, and whether we held the claim."""

    status: str
    size: int = 0
    claimed: bool = False
    message: str | None = None


class _Progress:
    """``on_progress`` / ``on_session`` callbacks that write to the claimed row, throttled."""

    def __init__(self, claim: _Claim) -> None:
        self.claim = claim
        self.last = time.monotonic()  # the claim itself was the first heartbeat

    def _update(self, **values: Any) -> None:
        c = self.claim
        db.session.execute(
            _files(c.user_id)
            .where(
                File.id == c.file_id,
                File.onedrive_sync_status == "syncing",
                File.claimed_at == c.claimed_at,
            )  # fmt: skip
            .values(heartbeat_at=utcnow(), **values)
        )
        db.session.commit()

    def progress(self, sent: int, total: int) -> None:
        now = time.monotonic()
        if sent >= total or now - self.last < PROGRESS_INTERVAL:
            return  # the final count is written with the result
        self.last = now
        self._update(bytes_sent=sent)

    def session(self, url: str, expires_at: datetime | None) -> None:
        self._update(upload_url=url, upload_expires_at=expires_at)


def sync_file(
    file_id: int,
    user_id: int,
    drive: Drive,
    run_id: int | None = None,
    *,
    folder_id: str | None = None,
    resolve: str | None = None,
) -> SyncOutcome:
    """Claim, upload, verify and record one of the owner's files; return how it ended.

    Outside a run a pending file (not_synced or error) is taken; inside a run only not_synced
    (the run moved its error files there), and with ``resolve`` only a conflict. When the user
    must reconnect, the file goes back to not_synced and ``ReauthNeeded`` is raised.
    """
    from .integrations import ReauthRequired

    f = db.session.execute(
        db.select(File).where(File.id == file_id, File.owner_id == user_id)
    ).scalar_one_or_none()
    if f is None:
        db.session.rollback()
        return SyncOutcome("gone")
    if resolve:
        allowed: tuple[str, ...] = ("conflict",)
    else:
        allowed = ("not_synced",) if run_id is not None else PENDING_STATUSES
    if f.onedrive_sync_status not in allowed:
        status, size = f.onedrive_sync_status, f.size
        db.session.rollback()
        return SyncOutcome(status, size)
    if folder_id is None:
        folder_id = _load_integration(user_id).folder_id
        assert folder_id is not None  # noqa: S101 - _load_integration checks it
    claim = _claim(f, allowed)
    if claim is None:
        return SyncOutcome("busy", 0)
    try:
        status, values = _push(claim, drive, folder_id, resolve)
    except (AuthError, ReauthRequired, ReauthNeeded) as exc:
        message = exc.human_message() if isinstance(exc, GraphError) else exc.message
        db.session.rollback()
        _release(claim, "not_synced")
        logger.info("file %s of user %s: OneDrive needs reconnecting", file_id, user_id)
        raise ReauthNeeded(message) from None
    except GraphError as exc:
        db.session.rollback()
        status, values = "error", {"onedrive_error": _short(exc.human_message())}
        logger.info("file %s of user %s failed: %s", file_id, user_id, exc.code)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        # Only local file errors: requests' exceptions are OSErrors too, but the Graph layer
        # turns every transport failure into a GraphError before it gets here.
        db.session.rollback()
        status, values = "error", {"onedrive_error": MISSING_MESSAGE}
        logger.warning("file %s of user %s: cannot read its stored bytes", file_id, user_id)
    except Exception:
        db.session.rollback()
        logger.exception("file %s of user %s: unexpected failure", file_id, user_id)
        status, values = "error", {"onedrive_error": UNEXPECTED_MESSAGE}
    return _finish(claim, status, values, run_id)


def _claim(f: File, allowed: tuple[str, ...]) -> _Claim | None:
    """Take the file (conditional UPDATE on status and version); return the claim or None."""
    now = utcnow()
    claim = _Claim(
        file_id=f.id,
        user_id=f.owner_id,
        claimed_at=now,
        version=f.version,
        name=f.original_name,
        size=f.size,
        stored_path=f.stored_path,
        content_hash=f.content_hash,
        quick_xor_hash=f.quick_xor_hash,
        updated_at=f.updated_at,
        onedrive_id=f.onedrive_id,
        onedrive_etag=f.onedrive_etag,
        onedrive_ctag=f.onedrive_ctag,
        synced_content_hash=f.synced_content_hash,
        upload_url=f.upload_url,
        upload_expires_at=f.upload_expires_at,
    )
    moved = db.session.execute(
        _files(f.owner_id)
        .where(File.id == f.id, File.onedrive_sync_status.in_(allowed), File.version == f.version)
        .values(
            onedrive_sync_status="syncing",
            claimed_at=now,
            heartbeat_at=now,
            bytes_sent=0,
            onedrive_error=None,
            onedrive_note=None,
        )  # fmt: skip
    ).rowcount
    db.session.commit()  # also ends the read transaction before a long upload
    return claim if moved == 1 else None


def _ours(claim: _Claim) -> Any:
    return _files(claim.user_id).where(
        File.id == claim.file_id,
        File.onedrive_sync_status == "syncing",
        File.claimed_at == claim.claimed_at,
    )


def _release(claim: _Claim, status: str) -> None:
    db.session.execute(
        _ours(claim).values(onedrive_sync_status=status, claimed_at=None, heartbeat_at=None)
    )
    db.session.commit()


def _count(run_id: int | None, user_id: int, status: str, size: int) -> None:
    """Add a finished file to its run's counters, in the caller's transaction."""
    if run_id is None:
        return
    runs = update(SyncRun).where(SyncRun.id == run_id, SyncRun.user_id == user_id)
    # Atomic increments: several threads (and maybe hosts) update the same row.
    if status == "synced":
        stmt = runs.values(succeeded=SyncRun.succeeded + 1, bytes_done=SyncRun.bytes_done + size)
    elif status in ("error", "conflict"):
        stmt = runs.values(failed=SyncRun.failed + 1, bytes_done=SyncRun.bytes_done + size)
    else:
        # Replaced while uploading: it leaves this run and waits for the next one.
        stmt = runs.values(total=SyncRun.total - 1, bytes_total=SyncRun.bytes_total - size)
    db.session.execute(stmt)


def _finish(
    claim: _Claim, status: str, values: dict[str, Any], run_id: int | None = None
) -> SyncOutcome:
    """Record the result if we still hold the claim on the same version; return the outcome.

    The file's new status and its run's counters change in one transaction.
    """
    base: dict[str, Any] = {"claimed_at": None, "heartbeat_at": None}
    if status == "synced":
        base |= {"upload_url": None, "upload_expires_at": None, "bytes_sent": claim.size}
    elif status == "error":
        base |= {"upload_url": None, "upload_expires_at": None}
    size = claim.size
    moved = db.session.execute(
        _ours(claim)
        .where(File.version == claim.version)
        .values(onedrive_sync_status=status, **base, **values)
    ).rowcount
    if moved == 1:
        _count(run_id, claim.user_id, status, size)
    db.session.commit()
    if moved == 1:
        return SyncOutcome(status, size, claimed=True, message=values.get("onedrive_error"))
    # Replaced during the upload: the new version waits for the next run. If the old one did
    # reach OneDrive, remember that item as ours, so the next run replaces it (no false conflict).
    remembered = (
        {k: v for k, v in values.items() if k != "onedrive_note"} if status == "synced" else {}
    )
    moved = db.session.execute(
        _ours(claim).values(
            onedrive_sync_status="not_synced",
            upload_url=None,
            upload_expires_at=None,
            claimed_at=None,
            heartbeat_at=None,
            **remembered,
        )  # fmt: skip
    ).rowcount
    if moved == 1:
        _count(run_id, claim.user_id, "not_synced", size)
    db.session.commit()
    if moved == 1:
        logger.info("file %s changed while uploading; left not_synced", claim.file_id)
        return SyncOutcome("not_synced", size, claimed=True)
    logger.info("file %s was deleted or reclaimed during its upload", claim.file_id)
    return SyncOutcome("gone", size)


def synced_fields(
    item: DriveItem, content_hash: str, name: str | None = None, note: str | None = None
) -> dict[str, Any]:
    """Return the File columns that record ``item`` as the OneDrive copy of ``content_hash``."""
    return {
        "onedrive_id": item.get("id"),
        "onedrive_etag": item.get("eTag"),
        "onedrive_ctag": item.get("cTag"),
        "onedrive_name": item.get("name") or name,
        "onedrive_path": _remote_path(item),
        "onedrive_web_url": item.get("webUrl"),
        "onedrive_synced_at": utcnow(),
        "onedrive_error": None,
        "onedrive_note": note,
        "synced_content_hash": content_hash,
    }


def link_to_item(user_id: int, file_id: int, item: DriveItem, content_hash: str) -> bool:
    """Mark the owner's unsynced file as synced to ``item`` (identical on OneDrive)."""
    return update_sync_status(
        user_id, file_id, "synced", expected="not_synced", **synced_fields(item, content_hash)
    )


def _synced_values(claim: _Claim, item: DriveItem, note: str | None) -> dict[str, Any]:
    return synced_fields(item, claim.content_hash, claim.name, note)


def _remote_unchanged(claim: _Claim, remote: DriveItem) -> bool:
    """Return whether OneDrive's item is still what we last synced (cTag, else eTag)."""
    if claim.onedrive_ctag and remote.get("cTag"):
        return remote.get("cTag") == claim.onedrive_ctag
    return bool(claim.onedrive_etag) and remote.get("eTag") == claim.onedrive_etag


def _push(
    claim: _Claim, drive: Drive, folder_id: str, resolve: str | None
) -> tuple[str, dict[str, Any]]:
    """Upload (or adopt) the claimed file; return the status and the columns to record."""
    reason = validate_name(claim.name)
    if reason:
        raise NameNotAllowedError(reason, claim.name)
    if claim.size > MAX_FILE_SIZE:
        raise FileTooLargeError(claim.size, MAX_FILE_SIZE)
    path = str(_storage().path(claim.stored_path))
    resume = None
    if claim.upload_url and (claim.upload_expires_at is None or claim.upload_expires_at > utcnow()):
        resume = ResumeState(claim.upload_url, claim.upload_expires_at)
    tracker = _Progress(claim)
    fragment = _fragment_size()

    def upload(
        parent_id: str, name: str, behavior: str, if_match: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        result = drive.upload(
            path,
            parent_id,
            name,
            conflict_behavior=behavior,
            if_match=if_match,
            fragment_size=fragment,
            modified_at=claim.updated_at,
            on_progress=tracker.progress,
            resume=resume if behavior != "rename" else None,
            on_session=tracker.session,
        )
        note = None
        if result.service_modified:
            note = SERVICE_MODIFIED_NOTE
        elif not result.hash_matched:
            note = UNVERIFIED_NOTE
        return "synced", _synced_values(claim, result.item, note)

    remote: DriveItem | None = None
    if claim.onedrive_id:
        try:
            remote = drive.get_item(claim.onedrive_id)
        except GraphError as exc:
            if exc.status != 404:
                raise
            remote = None  # deleted on OneDrive: upload it again as a new item
    target_parent = ((remote or {}).get("parentReference") or {}).get("id") or folder_id
    target_name = (remote or {}).get("name") or claim.name

    if resolve == "keep_both":
        return upload(folder_id, claim.name, "rename")
    if resolve == "replace":
        return upload(target_parent, target_name, "replace")

    if remote is not None:
        if _remote_hash(remote) == claim.quick_xor_hash:
            return "synced", _synced_values(claim, remote, None)
        if not _remote_unchanged(claim, remote):
            if claim.content_hash == claim.synced_content_hash:
                # Only OneDrive changed: we sync one way and never overwrite their edit.
                return "synced", {"onedrive_note": REMOTE_CHANGED_NOTE, "onedrive_error": None}
            return "conflict", {"onedrive_error": BOTH_CHANGED_MESSAGE}
        try:
            # If-Match on the eTag just read closes the race between our read and our write.
            return upload(target_parent, target_name, "replace", remote.get("eTag"))
        except GraphError as exc:
            if exc.status != 412:
                raise
            return "conflict", {"onedrive_error": BOTH_CHANGED_MESSAGE}
    try:
        return upload(folder_id, claim.name, "fail")
    except GraphError as exc:
        if exc.status != 409:
            raise
    # A file of that name already exists and it is not ours: never overwrite it blindly.
    existing = drive.get_child(folder_id, claim.name)
    if _remote_hash(existing) == claim.quick_xor_hash:
        logger.info("file %s: OneDrive already holds identical bytes; adopted", claim.file_id)
        return "synced", _synced_values(claim, existing, None)
    return "conflict", {
        "onedrive_error": _short(
            f'A different file called "{claim.name}" is already in your OneDrive folder. '
            "Choose which to keep."
        )
    }
