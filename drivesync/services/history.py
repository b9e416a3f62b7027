"""Per-file sync history: what happened to each file, heard from the ``file_*`` domain events.

Rows belong to the file's owner (row-level security on PostgreSQL, and every query here is
scoped). They outlive the file, so the history of a deleted file can still be read from the
Activity page, and they go with the account (foreign key to ``users``, ON DELETE CASCADE).
"""

from __future__ import annotations

import logging
from typing import Any, cast

from sqlalchemy import Table, insert

from .. import events
from ..extensions import db
from ..models import File, FileEvent, utcnow
from .errors import NotFound

logger = logging.getLogger(__name__)

# signal -> kind stored in file_events.kind
_SIGNALS = {
    events.file_uploaded: "uploaded",
    events.file_replaced: "replaced",
    events.file_renamed: "renamed",
    events.file_deleted: "deleted",
    events.file_imported: "imported",
    events.file_synced: "synced",
    events.file_failed: "failed",
    events.file_conflict: "conflict",
    events.conflict_resolved: "resolved",
    events.file_remote_changed: "remote",
}


# What the user chose, as the history page says it ("Conflict resolved: kept both.").
_CHOICES = {
    "keep_both": "kept both",
    "replace": "replaced OneDrive's copy",
    "skip": "kept OneDrive's copy",
    "keep_library": "kept the library's version over OneDrive's newer one",
    "upload_again": "uploading again after it was deleted in OneDrive",
    "keep_only": "kept only in the library after it was deleted in OneDrive",
}


def _detail(kind: str, kw: dict[str, Any]) -> str | None:
    if kind == "renamed":
        return f"{kw.get('old_name', '')} → {kw.get('new_name', '')}"[:600]
    if kind == "failed":
        reason = str(kw.get("reason") or "")
        kind_of = kw.get("kind")
        return (f"{reason} ({kind_of})" if kind_of else reason)[:600] or None
    if kind == "conflict":
        return str(kw.get("reason") or "")[:600] or None
    if kind == "remote":
        change = {"edited": "Edited in OneDrive", "renamed": "Renamed or moved in OneDrive",
                  "deleted": "Deleted in OneDrive", "restored": "Restored in OneDrive"}.get(
            str(kw.get("change")), "Changed in OneDrive")  # fmt: skip
        name = kw.get("name")
        return (f"{change}: {name}" if name else change)[:600]
    if kind == "resolved":
        action = str(kw.get("action") or "")
        return _CHOICES.get(action, action)[:600] or None
    if kind == "synced" and kw.get("replaced"):
        return "replaced the OneDrive copy"
    if kind == "deleted":
        # Keep the name with the history of a deleted file: it is the owner's own data, and
        # goes with the account; the live row is about to disappear.
        f = db.session.get(File, kw.get("file_id"))
        return f.original_name if f is not None else None
    return None


_INSERT = insert(cast(Table, FileEvent.__table__))


def _receiver(kind: str) -> Any:
    def receive(sender: object, **kw: Any) -> None:
        user_id, file_id = kw.get("user_id"), kw.get("file_id")
        if user_id is None or file_id is None:
            logger.warning("file event %s without user_id or file_id ignored", kind)
            return
        size = kw.get("size")
        # A Core INSERT built once, in the sender's transaction: a history row per synced file
        # through the ORM's unit of work cost the sync engine a tenth of its CPU per file.
        db.session.execute(
            _INSERT,
            {
                "user_id": user_id,
                "file_id": file_id,
                "created_at": utcnow(),
                "kind": kind,
                "item_id": (str(kw["item_id"])[:128] if kw.get("item_id") else None),
                "etag": (str(kw["etag"])[:255] if kw.get("etag") else None),
                "size": int(size) if size is not None else None,
                "detail": _detail(kind, kw),
            },
        )

    return receive


_receivers: list[Any] = []


def subscribe() -> None:
    """Connect the history receivers to the file events (idempotent)."""
    if _receivers:
        return
    for signal, kind in _SIGNALS.items():
        fn = _receiver(kind)
        _receivers.append(fn)  # blinker keeps weak references: hold the closures
        signal.connect(fn)


def file_history(owner_id: int, file_id: int) -> tuple[File | None, list[FileEvent]]:
    """Return the owner's file (None once deleted) and its history, newest first.

    Raise ``NotFound`` when the owner has neither the file nor any history of it (also for
    other users' ids: indistinguishable on purpose).
    """
    f = db.session.execute(
        db.select(File).where(File.id == file_id, File.owner_id == owner_id)
    ).scalar_one_or_none()
    rows = list(
        db.session.execute(
            db.select(FileEvent)
            .where(FileEvent.user_id == owner_id, FileEvent.file_id == file_id)
            .order_by(FileEvent.created_at.desc(), FileEvent.id.desc())
        ).scalars()
    )
    if f is None and not rows:
        raise NotFound("That file does not exist.")
    return f, rows


def user_history(owner_id: int) -> list[dict[str, Any]]:
    """Return every history row of the owner, oldest first, as plain values (for the export)."""
    rows = db.session.execute(
        db.select(FileEvent)
        .where(FileEvent.user_id == owner_id)
        .order_by(FileEvent.created_at, FileEvent.id)
    ).scalars()
    return [
        {
            "file_id": r.file_id,
            "time": r.created_at.isoformat(),
            "kind": r.kind,
            "item_id": r.item_id,
            "etag": r.etag,
            "size": r.size,
            "detail": r.detail,
        }
        for r in rows
    ]


def deleted_files(owner_id: int) -> list[FileEvent]:
    """Return the "deleted" history rows of the owner's files, newest first (for Activity)."""
    return list(
        db.session.execute(
            db.select(FileEvent)
            .where(FileEvent.user_id == owner_id, FileEvent.kind == "deleted")
            .order_by(FileEvent.created_at.desc(), FileEvent.id.desc())
        ).scalars()
    )
