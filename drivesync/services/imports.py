"""Imports from OneDrive as background jobs: a new library file, or OneDrive's version of one.

``start_import`` (Browse's Import) and ``start_version_import`` (*Import OneDrive's version* of a
``remote_changed`` file) check everything that can be checked before a byte moves: the item is a
file of the sync folder, no library file tracks it yet (or, for a version, the file really is
``remote_changed``), it fits the upload limit and the quota, and no import of it is under way.
They record an ``import_jobs`` row and hand its id to the task backend (``tasks.IMPORT``).

:func:`run_import` (the job body) claims the job with a conditional UPDATE (queued → running),
reads the item again, streams its content into storage through a quota meter (constant memory),
records ``bytes_done`` and ``heartbeat_at`` at most every ``PROGRESS_EVERY`` bytes or
``heartbeat_every`` seconds, and compares the quickXorHash of what arrived with the item's. A
mismatch fails the job and discards the bytes. A new file whose hash matches is linked to the
item as synced; a version replaces the library's bytes (like Replace) and is linked as synced.

Safe to run twice: a second delivery finds the job claimed and leaves; a job the scheduler
queued again (its worker died) finds the item already tracked or the version already taken and
ends as done without a second copy. Each claim stamps ``started_at``, and every later write of a
run is conditional on it, so a run that lost its claim to a newer one stops and keeps nothing.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import IO, Any, cast

from flask import current_app
from sqlalchemy import update

from .. import tasks
from ..extensions import db
from ..graph.client import GraphClient
from ..graph.errors import GraphError
from ..graph.types import DriveItem
from ..models import File, ImportJob, Integration, utcnow
from ..scope import user_scope
from . import library, quota
from .errors import Conflict, NotFound, ServiceError
from .integrations import graph_client_for
from .remote import graph_failure
from .storage import IncomingFile, LocalStorage
from .transfer import changed, files_of, synced_fields

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
PROGRESS_EVERY = 4 * 1024 * 1024  # bytes between two progress UPDATEs
GONE = "That OneDrive file does not exist."
HASH_MISMATCH = (
    "The file that arrived from OneDrive did not match its checksum, so nothing was kept. "
    "Try the import again."
)
NO_HASH = (
    "OneDrive gave no checksum for this file, so its version could not be checked and "
    "nothing was kept."
)
MOVED_ON = "This file changed in your library meanwhile, so OneDrive's version was not imported."
INTERRUPTED = "The import was interrupted several times; nothing was kept. Start it again."


def _storage() -> LocalStorage:
    return LocalStorage(current_app.config["STORAGE_DIR"])


def _remote_hash(item: DriveItem) -> str | None:
    return ((item.get("file") or {}).get("hashes") or {}).get("quickXorHash")


def _size(item: DriveItem) -> int | None:
    size = item.get("size")
    return int(size) if isinstance(size, int) else None


def folder_item(client: GraphClient, integration: Integration, item_id: str) -> DriveItem:
    """Return the driveItem ``item_id`` if it is a file directly in the sync folder.

    Only files of the folder we sync are importable: no walking the rest of the drive.
    """
    try:
        item = client.get_item(item_id)
    except GraphError as exc:
        if exc.status in (400, 404):
            raise NotFound(GONE) from exc
        raise graph_failure(exc) from exc
    parent = (item.get("parentReference") or {}).get("id")
    if "file" not in item or parent != integration.folder_id:
        raise NotFound(GONE)
    return item


def _tracked_by(user_id: int, item_id: str) -> File | None:
    return db.session.execute(
        db.select(File).where(File.owner_id == user_id, File.onedrive_id == item_id)
    ).scalar_one_or_none()


def _serialise(user_id: int) -> None:
    """Lock the user's integration row until commit: two starts of one item queue one job."""
    changed(
        update(Integration)
        .where(Integration.user_id == user_id)
        .values(autosync=Integration.autosync)
        .execution_options(synchronize_session=False)
    )


def _refuse_if_active(user_id: int, item_id: str) -> None:
    busy = db.session.execute(
        db.select(ImportJob.id).where(
            ImportJob.user_id == user_id,
            ImportJob.item_id == item_id,
            ImportJob.status.in_(ACTIVE),
        )
    ).first()
    if busy is not None:
        db.session.rollback()
        raise Conflict("This OneDrive file is already being imported.")


def _queue(job: ImportJob, user_id: int) -> ImportJob:
    db.session.add(job)
    db.session.commit()
    job_id = job.id
    try:
        tasks.enqueue_import(job_id, user_id)
    except Exception:  # the row says queued: the scheduler queues it again
        logger.warning("imports: could not queue import %s; the scheduler will", job_id)
    db.session.expire_all()
    return get_job(user_id, job_id)


def start_import(user_id: int, item_id: str) -> ImportJob:
    """Queue the import of a OneDrive file of the sync folder as a new library file.

    Raises ``NotFound`` (not a file of the folder), ``Conflict`` (already tracked, or being
    imported) or the size/quota refusal, all before any byte is downloaded.
    """
    client, integration = graph_client_for(user_id)
    item = folder_item(client, integration, item_id)
    tracked = _tracked_by(user_id, item_id)
    if tracked is not None:
        # Two library files tracking one OneDrive item would overwrite each other's versions.
        raise Conflict(f"This OneDrive file is already in your library as {tracked.original_name}.")
    # Imports count toward the upload limit and the quota like uploads (probe finding M2).
    quota.check_import(user_id, _size(item))
    _serialise(user_id)
    _refuse_if_active(user_id, item_id)
    now = utcnow()
    job = ImportJob(
        user_id=user_id,
        kind="new",
        item_id=item_id,
        name=library.clean_display_name(str(item.get("name") or "imported")),
        bytes_total=_size(item) or 0,
        created_at=now,
        enqueued_at=now,
    )
    return _queue(job, user_id)


def start_version_import(user_id: int, file_id: int) -> ImportJob:
    """Queue the import of OneDrive's newer version of a ``remote_changed`` library file."""
    f = library.get_file(user_id, file_id)
    if f.onedrive_sync_status != "remote_changed" or not f.onedrive_id:
        raise Conflict(f"{f.original_name} has no newer version in OneDrive to import.")
    item_id = f.onedrive_id
    client, integration = graph_client_for(user_id)
    item = folder_item(client, integration, item_id)
    quota.check_import(user_id, _size(item), replacing_file_id=f.id)
    _serialise(user_id)
    _refuse_if_active(user_id, item_id)
    now = utcnow()
    job = ImportJob(
        user_id=user_id,
        kind="version",
        item_id=item_id,
        file_id=f.id,
        name=f.original_name,
        bytes_total=_size(item) or 0,
        created_at=now,
        enqueued_at=now,
    )
    return _queue(job, user_id)


def get_job(user_id: int, job_id: int) -> ImportJob:
    """Return the user's import job or raise ``NotFound`` (also for other users' ids)."""
    job = db.session.execute(
        db.select(ImportJob).where(ImportJob.id == job_id, ImportJob.user_id == user_id)
    ).scalar_one_or_none()
    if job is None:
        raise NotFound("That import does not exist.")
    return job


job_status = get_job  # the name in the helpers' contract


def active_jobs(user_id: int) -> list[ImportJob]:
    """Return the user's queued and running imports, oldest first."""
    return list(
        db.session.execute(
            db.select(ImportJob)
            .where(ImportJob.user_id == user_id, ImportJob.status.in_(ACTIVE))
            .order_by(ImportJob.id)
        ).scalars()
    )


def versions_importing(user_id: int) -> set[int]:
    """Return the ids of the user's files whose OneDrive version is being imported."""
    return set(
        db.session.execute(
            db.select(ImportJob.file_id).where(
                ImportJob.user_id == user_id,
                ImportJob.kind == "version",
                ImportJob.status.in_(ACTIVE),
                ImportJob.file_id.is_not(None),
            )
        ).scalars()
    )


# -- the job ---------------------------------------------------------------------------------------


class _Lost(Exception):
    """This run's claim was taken by a newer run of the same job."""


class _Run:
    """One claimed run of a job: its conditional writes and its throttled progress."""

    def __init__(self, job_id: int, user_id: int, started: datetime) -> None:
        self.job_id = job_id
        self.user_id = user_id
        self.started = started
        self.every = max(1.0, float(current_app.config["SYNC_STALE_SECONDS"]) / 3)
        self.recorded = 0
        self.beat = time.monotonic()

    def _mine(self) -> Any:
        return (
            update(ImportJob)
            .where(
                ImportJob.id == self.job_id,
                ImportJob.user_id == self.user_id,
                ImportJob.status == "running",
                ImportJob.started_at == self.started,
            )
            .execution_options(synchronize_session=False)
        )

    def touch(self, **values: Any) -> None:
        """Record ``values`` and a heartbeat, or raise ``_Lost`` if the claim is gone."""
        moved = changed(self._mine().values(heartbeat_at=utcnow(), **values))
        db.session.commit()
        if not moved:
            raise _Lost()

    def progress(self, written: int, _total: int | None) -> None:
        """Record progress at most every ``PROGRESS_EVERY`` bytes or heartbeat interval."""
        now = time.monotonic()
        if written - self.recorded >= PROGRESS_EVERY or now - self.beat >= self.every:
            self.recorded, self.beat = written, now
            self.touch(bytes_done=written)

    def finish(self, status: str, **values: Any) -> bool:
        """End the run as ``status``; return whether it was still this run's to end."""
        moved = changed(
            self._mine().values(status=status, finished_at=utcnow(), heartbeat_at=None, **values)
        )
        db.session.commit()
        return bool(moved)


def _claim(job_id: int, user_id: int) -> tuple[_Run, ImportJob] | None:
    now = utcnow()
    claimed = changed(
        update(ImportJob)
        .where(ImportJob.id == job_id, ImportJob.user_id == user_id, ImportJob.status == "queued")
        .values(status="running", started_at=now, heartbeat_at=now, bytes_done=0, error=None)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if not claimed:
        return None  # taken by another delivery, finished, or gone with the account
    return _Run(job_id, user_id, now), get_job(user_id, job_id)


def run_import(job_id: int, user_id: int) -> None:
    """Run one import job (the task backend's ``IMPORT``); safe to run twice."""
    with user_scope(user_id):
        got = _claim(job_id, user_id)
        if got is None:
            return
        run, job = got
        try:
            _run(run, job)
        except _Lost:
            db.session.rollback()
            logger.info("import %s of user %s: a newer run took it over", job_id, user_id)
        except ServiceError as exc:
            db.session.rollback()
            run.finish("failed", error=exc.message[:500])
        except Exception:
            logger.exception("import %s of user %s failed", job_id, user_id)
            db.session.rollback()
            run.finish("failed", error="The import failed; nothing was kept. Try it again.")


def _already_done(user_id: int, job: ImportJob, item: DriveItem | None) -> int | None:
    """Return the library file an earlier run of this job already produced, if one did."""
    if job.kind == "new":
        tracked = _tracked_by(user_id, job.item_id)
        return tracked.id if tracked is not None else None
    f = db.session.get(File, job.file_id) if job.file_id else None
    if f is None or f.owner_id != user_id or f.onedrive_sync_status == "remote_changed":
        return None
    remote = _remote_hash(item) if item is not None else None
    if f.onedrive_sync_status == "synced" and remote and f.quick_xor_hash == remote:
        return f.id
    return None


def _run(run: _Run, job: ImportJob) -> None:
    user_id = run.user_id
    client, integration = graph_client_for(user_id)
    item = folder_item(client, integration, job.item_id)
    done = _already_done(user_id, job, item)
    if done is not None:
        run.finish("done", file_id=done, bytes_done=job.bytes_total)
        return
    version_of: File | None = None
    if job.kind == "version":
        version_of = db.session.get(File, job.file_id) if job.file_id else None
        if version_of is None or version_of.owner_id != user_id:
            raise NotFound("That library file does not exist any more.")
        if version_of.onedrive_sync_status != "remote_changed":
            raise Conflict(MOVED_ON)
    elif _tracked_by(user_id, job.item_id) is not None:
        raise Conflict("This OneDrive file is already in your library.")
    remote = _remote_hash(item)
    if version_of is not None and not remote:
        raise ServiceError(NO_HASH)
    size = _size(item)
    meter = quota.check_import(user_id, size, replacing_file_id=job.file_id)
    run.touch(bytes_total=size or 0)
    db.session.commit()  # no transaction stays open across the download
    storage = _storage()
    incoming = storage.new_incoming(meter.take)
    try:
        # IncomingFile is a write-only file object (write + close), all download() uses.
        client.download(job.item_id, cast(IO[bytes], incoming), on_progress=run.progress)
        if remote and incoming.quick_xor_hash != remote:
            logger.warning("import %s of user %s: quickXorHash mismatch", job.id, user_id)
            raise ServiceError(HASH_MISMATCH)
        run.touch(bytes_done=incoming.size)  # still ours: keep the bytes
    except GraphError as exc:
        storage.discard(incoming)
        raise graph_failure(exc) from exc
    except BaseException:
        storage.discard(incoming)
        raise
    if version_of is None:
        _keep_new(run, job, item, incoming, storage, linked=bool(remote))
    else:
        _keep_version(run, version_of, item, incoming, storage)


def _keep_new(
    run: _Run,
    job: ImportJob,
    item: DriveItem,
    incoming: IncomingFile,
    storage: LocalStorage,
    *,
    linked: bool,
) -> None:
    user_id = run.user_id
    f = library.add_file(user_id, job.name, incoming, storage, imported_item=job.item_id)
    if linked:
        # It is OneDrive's copy byte for byte: track it as synced instead of uploading it back.
        changed(
            files_of(user_id)
            .where(File.id == f.id, File.onedrive_sync_status == "not_synced")
            .values(onedrive_sync_status="synced", **synced_fields(item, f.content_hash))
        )
        db.session.commit()
    run.finish("done", file_id=f.id, bytes_done=f.size)
    logger.info("user %s imported a OneDrive file into file %s", user_id, f.id)


def _keep_version(
    run: _Run, f: File, item: DriveItem, incoming: IncomingFile, storage: LocalStorage
) -> None:
    user_id, file_id = run.user_id, f.id
    # The new bytes are OneDrive's: remote_changed -> synced in the same transaction.
    f = library.replace_file(
        user_id,
        file_id,
        incoming,
        storage,
        onedrive_version=synced_fields(item, incoming.sha256),
    )
    run.finish("done", file_id=file_id, bytes_done=f.size)
    logger.info("user %s imported OneDrive's version of file %s", user_id, file_id)
