"""Export everything of a user as one zip: every library file plus ``drivesync-export.json``.

The zip is generated while it is sent (zipstream-ng), reading each file in 1 MiB chunks, so
memory stays flat whatever the library's size. Files are stored uncompressed under
``files/<original name>``: duplicates become ``name (2).ext``, and characters that some
unzip tools treat as paths or refuse are replaced.

Small exports stream straight to the browser. Larger ones (over ``EXPORT_INLINE_MB``) run on
the task backend: the zip is written into storage under a generated name, the page shows its
progress, and the download link is signed for that user, expires after
``EXPORT_LINK_MINUTES``, and stops working once the zip is purged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import update
from zipstream import ZIP_STORED, ZipStream

from .. import events, tasks
from ..extensions import db
from ..models import ExportJob, File, Integration, User, utcnow
from ..scope import user_scope
from . import audit, history
from .errors import NotFound
from .quota import usage
from .storage import LocalStorage

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024  # bytes read from a stored file at a time

MANIFEST = "drivesync-export.json"
FORMAT = "drivesync-export/1"
_LINK_SALT = "drivesync-export-link"
_UNSAFE = re.compile(r'[\\/:*?"<>|]')
PROGRESS_EVERY = 8 * 1024 * 1024  # commit progress (and the heartbeat) once per this many bytes
INTERRUPTED = "The export was interrupted several times. Start it again."


@dataclass(frozen=True)
class Entry:
    """One library file as it goes into the zip."""

    file_id: int
    arcname: str
    stored_path: str
    size: int


def safe_zip_name(name: str) -> str:
    """Return ``name`` made safe as one zip path component (no separators, no control chars)."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).strip().rstrip(". ")
    if name in {"", ".", ".."}:
        name = "file"
    return name


def _disambiguate(name: str, taken: set[str]) -> str:
    """Return ``name``, or ``name (2).ext``, ``name (3).ext`` … if taken (case-insensitively)."""
    if name.casefold() not in taken:
        taken.add(name.casefold())
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, dot, ext = name, "", ""
    n = 2
    while True:
        candidate = f"{stem} ({n}){dot}{ext}"
        if candidate.casefold() not in taken:
            taken.add(candidate.casefold())
            return candidate
        n += 1


def _entries(user_id: int) -> list[Entry]:
    rows = db.session.execute(
        db.select(File.id, File.original_name, File.stored_path, File.size)
        .where(File.owner_id == user_id)
        .order_by(File.created_at, File.id)
    ).all()
    taken: set[str] = set()
    return [
        Entry(fid, "files/" + _disambiguate(safe_zip_name(name), taken), stored, size)
        for fid, name, stored, size in rows
    ]


def manifest(user_id: int, entries: list[Entry]) -> dict[str, Any]:
    """Return the account, files' metadata, sync history and audit entries of the user."""
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound("That account does not exist.")
    paths = {e.file_id: e.arcname for e in entries}
    files = db.session.execute(
        db.select(File).where(File.owner_id == user_id).order_by(File.created_at, File.id)
    ).scalars()
    integration = db.session.execute(
        db.select(Integration).where(Integration.user_id == user_id)
    ).scalar_one_or_none()

    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "format": FORMAT,
        "exported_at": utcnow().isoformat(),
        "account": {"id": user.id, "email": user.email, "created_at": when(user.created_at)},
        "onedrive": None
        if integration is None
        else {
            "status": integration.status,
            "account_name": integration.account_name,
            "account_email": integration.account_email,
            "drive_type": integration.drive_type,
            "folder_path": integration.folder_path,
            "connected_at": when(integration.connected_at),
            "last_sync_at": when(integration.last_sync_at),
        },
        "files": [
            {
                "id": f.id,
                "name": f.original_name,
                "path_in_zip": paths.get(f.id),
                "size": f.size,
                "mime_type": f.mime_type,
                "sha256": f.content_hash,
                "quick_xor_hash": f.quick_xor_hash,
                "version": f.version,
                "created_at": when(f.created_at),
                "updated_at": when(f.updated_at),
                "onedrive": {
                    "status": f.onedrive_sync_status,
                    "item_id": f.onedrive_id,
                    "path": f.onedrive_path,
                    "web_url": f.onedrive_web_url,
                    "synced_at": when(f.onedrive_synced_at),
                    "error": f.onedrive_error,
                },
            }
            for f in files
        ],
        "sync_history": history.user_history(user_id),
        "audit": audit.user_entries(user_id),
    }


def _read(path: os.PathLike[str], on_bytes: Any = None) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield chunk


def build_zip(user_id: int, storage: LocalStorage, on_bytes: Any = None) -> ZipStream:
    """Return the user's export as a lazy zip stream (iterate it to get the bytes).

    Everything from the database is read now, inside the caller's scope; file bytes are read
    only while the stream is iterated.
    """
    entries = _entries(user_id)
    data = json.dumps(manifest(user_id, entries), ensure_ascii=False, indent=2).encode()
    zs = ZipStream(compress_type=ZIP_STORED)
    zs.add(data, MANIFEST)
    for e in entries:
        zs.add(_read(storage.path(e.stored_path), on_bytes), e.arcname)
    return zs


def export_size(user_id: int) -> int:
    """Return the total size of the user's library files."""
    return usage(user_id).used


def runs_in_background(user_id: int) -> bool:
    """Return whether the user's export is large enough to run on the task backend."""
    limit = int(current_app.config.get("EXPORT_INLINE_MB", 200)) * 1024 * 1024
    return export_size(user_id) > limit


def stream_export(user_id: int, storage: LocalStorage) -> Iterator[bytes]:
    """Record the export and return its zip bytes as an iterator (small exports)."""
    zs = build_zip(user_id, storage)
    events.data_exported.send(None, user_id=user_id)
    db.session.commit()
    return iter(zs)


def start_export(user_id: int) -> ExportJob:
    """Queue a background export for the user and return its job."""
    purge_expired(user_id, _storage())
    entries = _entries(user_id)
    job = ExportJob(
        user_id=user_id,
        files_total=len(entries),
        bytes_total=sum(e.size for e in entries),
        created_at=utcnow(),
    )
    db.session.add(job)
    db.session.commit()
    tasks.enqueue_export(job.id, user_id)
    db.session.refresh(job)
    return job


def _storage() -> LocalStorage:
    return LocalStorage(current_app.config["STORAGE_DIR"])


def build_export(job_id: int, user_id: int) -> None:
    """Write the user's export zip into storage, with progress on the job (task backend)."""
    storage = _storage()
    with user_scope(user_id):
        # A worker that died mid-build left its partial zip under the name it recorded.
        leftover = db.session.execute(
            db.select(ExportJob.stored_path).where(
                ExportJob.id == job_id, ExportJob.user_id == user_id, ExportJob.status == "queued"
            )
        ).scalar_one_or_none()
        name = secrets.token_hex(16)
        now = utcnow()
        claimed = db.session.execute(
            update(ExportJob)
            .where(
                ExportJob.id == job_id,
                ExportJob.user_id == user_id,
                ExportJob.status == "queued",
            )
            # The name is recorded before a byte is written, so a recovery can remove a part.
            .values(
                status="running", started_at=now, heartbeat_at=now, stored_path=name, bytes_done=0
            )  # fmt: skip
        ).rowcount  # type: ignore[attr-defined]  # CursorResult has rowcount
        db.session.commit()
        if not claimed:
            return  # already taken (a redelivered task) or gone with the account
        if leftover:
            storage.path(leftover).unlink(missing_ok=True)
        path = storage.path(name)
        done = {"bytes": 0, "committed": 0}

        def progress(n: int) -> None:
            done["bytes"] += n
            if done["bytes"] - done["committed"] >= PROGRESS_EVERY:
                done["committed"] = done["bytes"]
                db.session.execute(
                    update(ExportJob)
                    .where(ExportJob.id == job_id, ExportJob.user_id == user_id)
                    .values(bytes_done=done["bytes"], heartbeat_at=utcnow())
                )
                db.session.commit()

        try:
            zs = build_zip(user_id, storage, progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in zs:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except Exception:
            logger.exception("export %s for user %s failed", job_id, user_id)
            db.session.rollback()
            path.unlink(missing_ok=True)
            _finish(job_id, user_id, status="failed", stored_path=None,
                    error="The export could not be built.")  # fmt: skip
            return
        minutes = int(current_app.config.get("EXPORT_LINK_MINUTES", 60))
        _finish(
            job_id,
            user_id,
            status="done",
            stored_path=name,
            files_done=ExportJob.files_total,
            bytes_done=done["bytes"],
            expires_at=utcnow() + timedelta(minutes=minutes),
        )
        logger.info("export %s for user %s is ready", job_id, user_id)


def discard_partial(user_id: int, job_id: int) -> None:
    """Remove the partial zip a dead worker left for a job given up (the scheduler's call)."""
    path = db.session.execute(
        db.select(ExportJob.stored_path).where(
            ExportJob.id == job_id, ExportJob.user_id == user_id, ExportJob.status == "failed"
        )
    ).scalar_one_or_none()
    if path:
        _storage().path(path).unlink(missing_ok=True)
        _finish(job_id, user_id, stored_path=None)


def _finish(job_id: int, user_id: int, **values: Any) -> None:
    db.session.execute(
        update(ExportJob)
        .where(ExportJob.id == job_id, ExportJob.user_id == user_id)
        .values(finished_at=utcnow(), **values)
    )
    db.session.commit()


def get_job(user_id: int, job_id: int) -> ExportJob:
    """Return the user's export job or raise ``NotFound`` (also for other users' ids)."""
    job = db.session.execute(
        db.select(ExportJob).where(ExportJob.id == job_id, ExportJob.user_id == user_id)
    ).scalar_one_or_none()
    if job is None:
        raise NotFound("That export does not exist.")
    return job


def latest_job(user_id: int) -> ExportJob | None:
    """Return the user's most recent export job, if any."""
    return db.session.execute(
        db.select(ExportJob)
        .where(ExportJob.user_id == user_id)
        .order_by(ExportJob.created_at.desc(), ExportJob.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_LINK_SALT)


def download_token(job: ExportJob) -> str:
    """Return the signed token of a finished job's download link (bound to its user)."""
    return _serializer().dumps({"j": job.id, "u": job.user_id})


def open_download(user_id: int, token: str, storage: LocalStorage) -> tuple[ExportJob, str]:
    """Check a download link for ``user_id``; return the job and the zip's path, and record
    the export. Raise ``NotFound`` for a bad, expired or other user's link."""
    max_age = int(current_app.config.get("EXPORT_LINK_MINUTES", 60)) * 60
    try:
        data = _serializer().loads(token, max_age=max_age)
    except BadSignature:
        raise NotFound("That download link is not valid any more. Start a new export.") from None
    if not isinstance(data, dict) or data.get("u") != user_id:
        raise NotFound("That download link is not valid any more. Start a new export.")
    job = get_job(user_id, int(data.get("j", 0)))
    expired = job.expires_at is None or job.expires_at <= utcnow()
    if job.status != "done" or not job.stored_path or expired:
        raise NotFound("That download link is not valid any more. Start a new export.")
    path = storage.path(job.stored_path)
    if not path.exists():
        raise NotFound("That download link is not valid any more. Start a new export.")
    events.data_exported.send(None, user_id=user_id)
    db.session.commit()
    return job, str(path)


def purge_expired(user_id: int, storage: LocalStorage) -> int:
    """Delete the user's expired export zips and their jobs; return how many."""
    now = utcnow()
    jobs = list(
        db.session.execute(
            db.select(ExportJob).where(ExportJob.user_id == user_id, ExportJob.expires_at <= now)
        ).scalars()
    )
    for job in jobs:
        if job.stored_path:
            storage.delete(job.stored_path)
        db.session.delete(job)
    db.session.commit()
    return len(jobs)


def purge_all_expired(storage: LocalStorage) -> int:
    """Purge expired exports of every user, one user scope at a time (operator command)."""
    db.session.commit()
    user_ids = list(db.session.execute(db.select(User.id).order_by(User.id)).scalars())
    db.session.commit()
    total = 0
    for uid in user_ids:
        with user_scope(uid):
            total += purge_expired(uid, storage)
    return total
