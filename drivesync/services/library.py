"""The user's files: store (streamed), list, replace, delete. Every query is scoped to an owner."""

from __future__ import annotations

import logging
import mimetypes
import unicodedata
from dataclasses import dataclass

from sqlalchemy import func, update

from .. import events
from ..extensions import db
from ..graph.names import MAX_FILE_SIZE, validate_name
from ..models import File, utcnow
from .errors import NotFound, ValidationError
from .paging import Pagination
from .storage import IncomingFile, LocalStorage

logger = logging.getLogger(__name__)

# The sentence of services/changes.BOTH_CHANGED_MESSAGE (library sits below it).
BOTH_SIDES_CHANGED = "Changed both here and in OneDrive since the last sync. Choose which to keep."

SORTS = {
    "name": (File.original_name.asc(), File.id.asc()),
    "-name": (File.original_name.desc(), File.id.desc()),
    "date": (File.created_at.asc(), File.id.asc()),
    "-date": (File.created_at.desc(), File.id.desc()),
    "size": (File.size.asc(), File.id.asc()),
    "-size": (File.size.desc(), File.id.desc()),
}
DEFAULT_SORT = "-date"
MAX_NAME = 255


@dataclass(frozen=True)
class Page(Pagination):
    """One page of a user's files."""

    items: list[File]
    page: int
    per_page: int
    total: int
    sort: str


def clean_display_name(raw: str | None) -> str:
    """Return a safe display name for an uploaded file, or raise ``ValidationError``.

    The name is only ever shown (escaped) and sent to OneDrive; bytes are stored under a
    generated name. Browsers may send a full path: keep the last component only.
    """
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in {"", ".", ".."}:
        raise ValidationError({"file": "The file has no usable name."})
    if len(name) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: MAX_NAME - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_NAME]
    return name


def guess_mime(name: str) -> str:
    """Return a MIME type from the file name (never trusted from the browser)."""
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def add_file(
    owner_id: int,
    name: str,
    incoming: IncomingFile,
    storage: LocalStorage,
    *,
    imported_item: str | None = None,
) -> File:
    """Keep an uploaded file: move its bytes into place and record it for ``owner_id``.

    Sends ``file_uploaded``, or ``file_imported`` when ``imported_item`` (a OneDrive item id)
    is where the bytes came from.
    """
    try:
        display = clean_display_name(name)
    except ValidationError:
        storage.discard(incoming)
        raise
    stored = storage.commit(incoming)
    now = utcnow()
    f = File(
        owner_id=owner_id,
        original_name=display,
        stored_path=stored,
        size=incoming.size,
        mime_type=guess_mime(display),
        content_hash=incoming.sha256,
        quick_xor_hash=incoming.quick_xor_hash,
        created_at=now,
        updated_at=now,
    )
    db.session.add(f)
    try:
        db.session.flush()
        if imported_item is None:
            events.file_uploaded.send(None, user_id=owner_id, file_id=f.id, size=f.size)
        else:
            events.file_imported.send(
                None, user_id=owner_id, file_id=f.id, item_id=imported_item, size=f.size
            )
        db.session.commit()
    except BaseException:
        db.session.rollback()
        storage.delete(stored)
        raise
    logger.info("user %s added file %s (%d bytes)", owner_id, f.id, f.size)
    return f


def get_file(owner_id: int, file_id: int) -> File:
    """Return the owner's file ``file_id`` or raise ``NotFound`` (also for other users' ids)."""
    f = db.session.execute(
        db.select(File).where(File.id == file_id, File.owner_id == owner_id)
    ).scalar_one_or_none()
    if f is None:
        raise NotFound("That file does not exist.")
    return f


def download_file(owner_id: int, file_id: int) -> File:
    """Return the owner's file ``file_id`` for sending, recording that it was downloaded."""
    f = get_file(owner_id, file_id)
    events.file_downloaded.send(None, user_id=owner_id, file_id=f.id)
    db.session.commit()
    return f


def clean_new_name(raw: str | None) -> str:
    """Return a name a user typed for a file, or raise ``ValidationError`` saying why not.

    Unlike an upload's name (which may carry a browser's path), a typed name is refused rather
    than trimmed; and a name OneDrive would refuse is refused here, so a rename fixes a file
    that failed for its name instead of failing again.
    """
    name = unicodedata.normalize("NFC", raw or "").strip()
    if not name:
        raise ValidationError({"name": "Type a new name for the file."})
    if any(unicodedata.category(ch)[0] == "C" for ch in name):
        raise ValidationError({"name": "The name contains control characters."})
    reason = validate_name(name)
    if reason:
        raise ValidationError({"name": reason})
    return name


def rename_file(owner_id: int, file_id: int, new_name: str) -> File:
    """Rename the owner's file; a file that failed to sync goes back to ``not_synced``.

    A file already in OneDrive keeps its name there (the next sync updates its bytes in place).
    """
    name = clean_new_name(new_name)
    f = get_file(owner_id, file_id)
    old = f.original_name
    if name == old:
        return f
    db.session.execute(
        update(File)
        .where(File.id == f.id, File.owner_id == owner_id)
        .values(original_name=name, mime_type=guess_mime(name))
    )
    # Conditional, like every sync transition: a file the engine has just claimed keeps its state.
    db.session.execute(
        update(File)
        .where(File.id == f.id, File.owner_id == owner_id, File.onedrive_sync_status == "error")
        .values(onedrive_sync_status="not_synced", onedrive_error=None)
    )
    events.file_renamed.send(None, user_id=owner_id, file_id=f.id, old_name=old, new_name=name)
    db.session.commit()
    db.session.refresh(f)
    logger.info("user %s renamed file %s", owner_id, f.id)
    return f


def sync_fix(f: File) -> str:
    """Return what can make the owner's failed file sync: ``rename``, ``replace`` or ``retry``.

    A name OneDrive refuses and a size over its limit are permanent: retrying cannot help.
    """
    if validate_name(f.original_name):
        return "rename"
    if f.size > MAX_FILE_SIZE:
        return "replace"
    return "retry"


def list_files(owner_id: int, sort: str = DEFAULT_SORT, page: int = 1, per_page: int = 25) -> Page:
    """Return one page of the owner's files in the requested order."""
    if sort not in SORTS:
        sort = DEFAULT_SORT
    total = db.session.execute(
        db.select(func.count()).select_from(File).where(File.owner_id == owner_id)
    ).scalar_one()
    pages = max(1, -(-total // per_page))
    page = min(max(1, page), pages)
    items = list(
        db.session.execute(
            db.select(File)
            .where(File.owner_id == owner_id)
            .order_by(*SORTS[sort])
            .limit(per_page)
            .offset((page - 1) * per_page)
        ).scalars()
    )
    return Page(items=items, page=page, per_page=per_page, total=total, sort=sort)


def replace_file(
    owner_id: int, file_id: int, incoming: IncomingFile, storage: LocalStorage
) -> File:
    """Store a new version of the owner's file; a synced file goes back to ``not_synced``."""
    try:
        f = get_file(owner_id, file_id)
    except NotFound:
        storage.discard(incoming)
        raise
    old = f.stored_path
    new = storage.commit(incoming)
    changed = incoming.sha256 != f.content_hash
    values: dict[str, object] = {
        "stored_path": new,
        "size": incoming.size,
        "content_hash": incoming.sha256,
        "quick_xor_hash": incoming.quick_xor_hash,
        "version": File.version + 1,
        "updated_at": utcnow(),
    }
    if changed:
        values["onedrive_note"] = None  # notes (skipped, rewritten…) were about old bytes
    db.session.execute(
        update(File).where(File.id == f.id, File.owner_id == owner_id).values(**values)
    )
    events.file_replaced.send(None, user_id=owner_id, file_id=f.id, size=incoming.size)
    if changed:
        # synced -> not_synced, error -> not_synced; a file mid-upload keeps "syncing" and the
        # engine, seeing the version move, leaves it not_synced when it finishes.
        db.session.execute(
            update(File)
            .where(
                File.id == f.id,
                File.owner_id == owner_id,
                File.onedrive_sync_status.in_(("synced", "error")),
            )
            .values(onedrive_sync_status="not_synced", onedrive_error=None)
        )
        # OneDrive already had a newer version: now both sides changed (the conflict's
        # choices). A remote_deleted file keeps its question; a local_only one stays local.
        db.session.execute(
            update(File)
            .where(
                File.id == f.id,
                File.owner_id == owner_id,
                File.onedrive_sync_status == "remote_changed",
            )
            .values(onedrive_sync_status="conflict", onedrive_error=BOTH_SIDES_CHANGED)
        )
    try:
        db.session.commit()
    except BaseException:
        db.session.rollback()
        storage.delete(new)
        raise
    storage.delete(old)
    db.session.refresh(f)
    logger.info("user %s replaced file %s (version %d)", owner_id, f.id, f.version)
    return f


def delete_file(owner_id: int, file_id: int, storage: LocalStorage) -> None:
    """Delete the owner's file: its row, then its bytes."""
    f = get_file(owner_id, file_id)
    stored = f.stored_path
    db.session.delete(f)
    events.file_deleted.send(None, user_id=owner_id, file_id=file_id)
    db.session.commit()
    storage.delete(stored)
    logger.info("user %s deleted file %s", owner_id, file_id)


def summary_counts(owner_id: int) -> dict[str, int]:
    """Return how many of the owner's files are in each sync status (one grouped query)."""
    rows = db.session.execute(
        db.select(File.onedrive_sync_status, func.count())
        .where(File.owner_id == owner_id)
        .group_by(File.onedrive_sync_status)
    ).all()
    return {status: n for status, n in rows}
