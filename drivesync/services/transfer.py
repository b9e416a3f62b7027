"""One file to OneDrive: claim → reconcile → push → finish, each step a conditional UPDATE.

States: ``not_synced → syncing → synced | error``; ``error → syncing`` (retry, via
``not_synced`` when a run takes the file); ``synced → not_synced`` (library.replace_file);
``→ conflict`` when both sides changed. Every transition is a conditional UPDATE checked by its
rowcount, so two workers never upload the same file twice; the claim's ``claimed_at`` doubles as
its token, so a worker whose claim was recovered as stale cannot overwrite the new owner's result.

This module knows one file at a time; ``runs.py`` drives many of them, ``sync.py`` asks for them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from flask import current_app
from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Executable,
    Row,
    Select,
    Table,
    Update,
    bindparam,
    or_,
    select,
    update,
)

from .. import events
from ..extensions import db
from ..graph.drive import Drive
from ..graph.errors import AuthError, FileTooLargeError, GraphError, NameNotAllowedError
from ..graph.names import MAX_FILE_SIZE, validate_name
from ..graph.types import DriveItem
from ..graph.upload import ResumeState
from ..models import File, Integration, SyncRun, utcnow
from . import failures
from .errors import ServiceError
from .heartbeats import beater
from .integrations import NotConnected, ReauthRequired, require_integration
from .storage import LocalStorage

logger = logging.getLogger(__name__)

PENDING_STATUSES = ("not_synced", "error")
SERVICE_MODIFIED_NOTE = (
    "OneDrive changed this Office file after upload (normal on OneDrive for Business)"
)
UNVERIFIED_NOTE = "OneDrive did not report a checksum for this file, so it was not verified."
REMOTE_CHANGED_NOTE = "Changed on OneDrive since the last sync; the OneDrive copy was kept."
MISSING_MESSAGE = "The stored copy of this file is missing; upload it again."
BOTH_CHANGED_MESSAGE = (
    "Both this file and its OneDrive copy changed since the last sync. Choose which to keep."
)
UNEXPECTED_MESSAGE = "Something went wrong while syncing this file; try again."
MAX_ERROR = 500


@dataclass(frozen=True)
class Target:
    """Where one run's files go and how: read once per run, shared by its worker threads.

    ``run_id`` is None for a file synced outside a run; ``resolve`` is a conflict decision
    (``keep_both`` / ``replace``) or None.
    """

    user_id: int
    folder_id: str
    storage: LocalStorage
    fragment_size: int
    heartbeat_every: float  # a third of SYNC_STALE_SECONDS: two beats may be lost
    run_id: int | None = None
    resolve: str | None = None

    @classmethod
    def from_config(
        cls, user_id: int, folder_id: str, run_id: int | None = None, resolve: str | None = None
    ) -> Target:
        """Return the target for ``user_id``'s folder with the app's storage and fragment size."""
        cfg = current_app.config
        fragment = cfg["UPLOAD_FRAGMENT_MB"] * 1024 * 1024
        every = cfg["SYNC_STALE_SECONDS"] / 3
        storage = LocalStorage(cfg["STORAGE_DIR"])
        return cls(user_id, folder_id, storage, fragment, every, run_id, resolve)


@dataclass(frozen=True)
class SyncOutcome:
    """How ``sync_file`` left a file: its status, its size, and whether we held the claim."""

    status: str
    size: int = 0
    claimed: bool = False
    message: str | None = None


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
    sync_attempts: int = 0  # failed tries so far (services/failures.py)


# -- shared helpers --------------------------------------------------------------------------------


def short(message: str) -> str:
    """Return ``message`` cut to the length an error column holds."""
    return message if len(message) <= MAX_ERROR else message[: MAX_ERROR - 1] + "…"


def changed(stmt: Executable, params: Mapping[str, Any] | None = None) -> int:
    """Execute a DML statement in the session's transaction; return how many rows it changed."""
    return int(cast("CursorResult[Any]", db.session.execute(stmt, params)).rowcount)


def files_of(user_id: int) -> Any:
    """Return an UPDATE of the owner's files (add ``.where`` and ``.values``)."""
    return update(File).where(File.owner_id == user_id).execution_options(synchronize_session=False)


def load_integration(user_id: int) -> Integration:
    """Return the user's active OneDrive integration with its folder, or raise why not."""
    integration = require_integration(user_id)
    if not integration.folder_id:
        raise NotConnected("The OneDrive folder is not set up yet: reconnect OneDrive.")
    return integration


def reauth_message(exc: AuthError | ServiceError) -> str:
    """Return the sentence that tells the user to reconnect, from either layer's error."""
    return exc.human_message() if isinstance(exc, GraphError) else exc.message


def recover_stale_claims(user_id: int) -> int:
    """Return the owner's claims whose heartbeat is too old (the worker died) to not_synced."""
    cutoff = utcnow() - timedelta(seconds=current_app.config["SYNC_STALE_SECONDS"])
    moved = int(
        changed(
            files_of(user_id)
            .where(
                File.onedrive_sync_status == "syncing",
                or_(File.heartbeat_at.is_(None), File.heartbeat_at < cutoff),
            )
            # Keep upload_url: the next attempt resumes the session if it is still open.
            .values(onedrive_sync_status="not_synced", claimed_at=None, heartbeat_at=None)
        )
    )
    db.session.commit()
    if moved:
        logger.warning("recovered %d stale sync claims of user %s", moved, user_id)
    return moved


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


# -- one file --------------------------------------------------------------------------------------


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
    must reconnect, the file goes back to not_synced and ``ReauthRequired`` is raised.
    """
    if folder_id is None:
        folder_id = load_integration(user_id).folder_id
        assert folder_id is not None  # noqa: S101 - load_integration checks it
    return push_file(file_id, drive, Target.from_config(user_id, folder_id, run_id, resolve))


def push_file(file_id: int, drive: Drive, target: Target) -> SyncOutcome:
    """Sync one file of ``target.user_id`` to ``target`` through ``drive`` (see ``sync_file``)."""
    user_id = target.user_id
    f = db.session.execute(_ROW, {"w_id": file_id, "w_owner": user_id}).one_or_none()
    if f is None:
        db.session.rollback()
        return SyncOutcome("gone")
    if target.resolve:
        allowed: tuple[str, ...] = ("conflict",)
    else:
        allowed = ("not_synced",) if target.run_id is not None else PENDING_STATUSES
    if f.onedrive_sync_status not in allowed:
        status, size = f.onedrive_sync_status, f.size
        db.session.rollback()
        return SyncOutcome(status, size)
    claim = _claim(f, allowed)
    if claim is None:
        return SyncOutcome("busy", 0)
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # LocalProxy is untyped
    beater.add(app, user_id, file_id, claim.claimed_at, target.heartbeat_every)
    try:
        return _push_claimed(claim, drive, target)
    finally:
        beater.discard(file_id, claim.claimed_at)


def _push_claimed(claim: _Claim, drive: Drive, target: Target) -> SyncOutcome:
    """Push the claimed file and record how it ended (the heartbeat runs meanwhile)."""
    file_id, user_id = claim.file_id, claim.user_id
    kind = "permanent"  # services/failures.py: transient, permanent or user
    try:
        status, values = _push(claim, drive, target)
    except (AuthError, ReauthRequired) as exc:
        db.session.rollback()
        _release(claim, "not_synced")
        logger.info("file %s of user %s: OneDrive needs reconnecting", file_id, user_id)
        raise ReauthRequired(reauth_message(exc)) from None
    except GraphError as exc:
        db.session.rollback()
        status = "error"
        values = failures.error_columns(exc, claim.sync_attempts, short(exc.human_message()))
        kind = values["failure_kind"]
        logger.info("file %s of user %s failed: %s", file_id, user_id, exc.code)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        # Only local file errors: requests' exceptions are OSErrors too, but the Graph layer
        # turns every transport failure into a GraphError before it gets here.
        db.session.rollback()
        status = "error"
        values = failures.error_columns(exc, claim.sync_attempts, MISSING_MESSAGE)
        kind = values["failure_kind"]
        logger.warning("file %s of user %s: cannot read its stored bytes", file_id, user_id)
    except Exception as exc:
        db.session.rollback()
        logger.exception("file %s of user %s: unexpected failure", file_id, user_id)
        status = "error"
        values = failures.error_columns(exc, claim.sync_attempts, UNEXPECTED_MESSAGE)
        kind = values["failure_kind"]
    return _finish(claim, status, values, target.run_id, kind)


# -- the per-file statements, built once -----------------------------------------------------------
# A file costs a handful of statements; building one with the ORM (``update(File).values(...)``)
# costs about ten times more CPU than executing it on SQLite, so the statements of the per-file
# path are Core statements built once, with bind parameters (``w_*`` in WHERE, ``v_*`` in SET).

_FILES = cast(Table, File.__table__)
_ROW_COLUMNS = (
    "id", "owner_id", "onedrive_sync_status", "version", "original_name", "size", "stored_path",
    "content_hash", "quick_xor_hash", "updated_at", "onedrive_id", "onedrive_etag",
    "onedrive_ctag", "synced_content_hash", "upload_url", "upload_expires_at", "sync_attempts",
)  # fmt: skip
_ROW: Select[Any] = select(*(_FILES.c[name] for name in _ROW_COLUMNS)).where(
    _FILES.c.id == bindparam("w_id"), _FILES.c.owner_id == bindparam("w_owner")
)


def _set(columns: tuple[str, ...]) -> dict[str, Any]:
    return {name: bindparam(f"v_{name}", type_=_FILES.c[name].type) for name in columns}


@cache
def _claim_stmt(allowed: tuple[str, ...], resume: bool) -> Update:
    """The claim: status and version unchanged since we read the row (see ``_claim``)."""
    c = _FILES.c
    return (
        update(_FILES)
        .where(
            c.owner_id == bindparam("w_owner"),
            c.id == bindparam("w_id"),
            c.onedrive_sync_status.in_(allowed),
            c.version == bindparam("w_version"),
        )
        .values(
            onedrive_sync_status="syncing",
            onedrive_error=None,
            onedrive_note=None,
            # A stored session resumes where OneDrive acknowledged; otherwise start from zero.
            bytes_sent=c.bytes_sent if resume else 0,
            **_set(("claimed_at", "heartbeat_at")),
        )
    )


@cache
def _ours_stmt(columns: tuple[str, ...], same_version: bool) -> Update:
    """An UPDATE of the row we hold the claim on (``_ours``), setting ``columns``."""
    c = _FILES.c
    stmt = update(_FILES).where(
        c.owner_id == bindparam("w_owner"),
        c.id == bindparam("w_id"),
        c.onedrive_sync_status == "syncing",
        c.claimed_at == bindparam("w_claimed", type_=c.claimed_at.type),
    )
    if same_version:
        stmt = stmt.where(c.version == bindparam("w_version"))
    return stmt.values(_set(columns))


def _set_ours(claim: _Claim, values: Mapping[str, Any], *, same_version: bool = False) -> int:
    """Set ``values`` on the claimed row if we still hold the claim (and, with ``same_version``,
    the file was not replaced meanwhile); return how many rows changed (0 or 1)."""
    if any(isinstance(v, ColumnElement) for v in values.values()):
        # A SQL expression (failures.error_columns' coalesce): the rare error path builds its own.
        stmt = _ours(claim)
        if same_version:
            stmt = stmt.where(File.version == claim.version)
        return changed(stmt.values(**values))
    params = {f"v_{name}": value for name, value in values.items()}
    params |= {"w_owner": claim.user_id, "w_id": claim.file_id, "w_claimed": claim.claimed_at}
    if same_version:
        params["w_version"] = claim.version
    return changed(_ours_stmt(tuple(sorted(values)), same_version), params)


def _claim(f: Row[Any], allowed: tuple[str, ...]) -> _Claim | None:
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
        sync_attempts=f.sync_attempts,
        upload_expires_at=f.upload_expires_at,
    )
    moved = changed(
        _claim_stmt(allowed, bool(f.upload_url)),
        {"w_owner": f.owner_id, "w_id": f.id, "w_version": f.version,
         "v_claimed_at": now, "v_heartbeat_at": now},
    )  # fmt: skip
    db.session.commit()  # also ends the read transaction before a long upload
    return claim if moved == 1 else None


def _ours(claim: _Claim) -> Any:
    return files_of(claim.user_id).where(
        File.id == claim.file_id,
        File.onedrive_sync_status == "syncing",
        File.claimed_at == claim.claimed_at,
    )


def _release(claim: _Claim, status: str) -> None:
    _set_ours(claim, {"onedrive_sync_status": status, "claimed_at": None, "heartbeat_at": None})
    db.session.commit()


class _Progress:
    """``on_progress`` / ``on_session`` callbacks that record the open session on the claimed row.

    The session (URL, expiry) is stored when opened and its acknowledged offset (``bytes_sent``,
    from OneDrive's ``nextExpectedRanges``) after every accepted fragment, so a worker that dies
    leaves what the next attempt needs to resume instead of starting over. Fragments are at least
    320 KiB and a simple PUT reports only its end, so small files cost no extra write.
    """

    def __init__(self, claim: _Claim) -> None:
        self.claim = claim

    def _update(self, **values: Any) -> None:
        _set_ours(self.claim, {"heartbeat_at": utcnow(), **values})
        db.session.commit()

    def progress(self, sent: int, total: int) -> None:
        if 0 < sent < total:  # nothing acknowledged yet; the final count comes with the result
            self._update(bytes_sent=sent)

    def session(self, url: str, expires_at: datetime | None) -> None:
        self._update(upload_url=url, upload_expires_at=expires_at)


_RUNS = cast(Table, SyncRun.__table__)
_RUN = update(_RUNS).where(_RUNS.c.id == bindparam("w_run"), _RUNS.c.user_id == bindparam("w_user"))
_SIZE = bindparam("size", type_=_RUNS.c.bytes_done.type)
# Atomic increments: several threads (and maybe hosts) update the same row.
_COUNT_SYNCED = _RUN.values(succeeded=_RUNS.c.succeeded + 1, bytes_done=_RUNS.c.bytes_done + _SIZE)
_COUNT_FAILED = _RUN.values(failed=_RUNS.c.failed + 1, bytes_done=_RUNS.c.bytes_done + _SIZE)
# Replaced while uploading: it leaves this run and waits for the next one.
_COUNT_LEFT = _RUN.values(total=_RUNS.c.total - 1, bytes_total=_RUNS.c.bytes_total - _SIZE)


def _count(run_id: int | None, user_id: int, status: str, size: int) -> None:
    """Add a finished file to its run's counters, in the caller's transaction."""
    if run_id is None:
        return
    if status == "synced":
        stmt = _COUNT_SYNCED
    elif status in ("error", "conflict"):
        stmt = _COUNT_FAILED
    else:
        stmt = _COUNT_LEFT
    db.session.execute(stmt, {"w_run": run_id, "w_user": user_id, "size": size})


def _finish(
    claim: _Claim,
    status: str,
    values: dict[str, Any],
    run_id: int | None = None,
    kind: str = "permanent",
) -> SyncOutcome:
    """Record the result if we still hold the claim on the same version; return the outcome.

    The file's new status and its run's counters change in one transaction.
    """
    base: dict[str, Any] = {"claimed_at": None, "heartbeat_at": None}
    if status == "synced":
        base |= {"upload_url": None, "upload_expires_at": None, "bytes_sent": claim.size}
        base |= failures.CLEARED  # the retry schedule and the failure streak end here
    elif status == "error":
        base |= {"upload_url": None, "upload_expires_at": None}
    size = claim.size
    moved = _set_ours(claim, {"onedrive_sync_status": status, **base, **values}, same_version=True)
    if moved == 1:
        _count(run_id, claim.user_id, status, size)
        _announce(claim, status, values, kind)
    db.session.commit()
    if moved == 1:
        return SyncOutcome(status, size, claimed=True, message=values.get("onedrive_error"))
    # Replaced during the upload: the new version waits for the next run. If the old one did
    # reach OneDrive, remember that item as ours, so the next run replaces it (no false conflict).
    remembered = (
        {k: v for k, v in values.items() if k != "onedrive_note"} if status == "synced" else {}
    )
    moved = _set_ours(
        claim,
        {
            "onedrive_sync_status": "not_synced",
            "upload_url": None,
            "upload_expires_at": None,
            "claimed_at": None,
            "heartbeat_at": None,
            **remembered,
        },
    )
    if moved == 1:
        _count(run_id, claim.user_id, "not_synced", size)
    db.session.commit()
    if moved == 1:
        logger.info("file %s changed while uploading; left not_synced", claim.file_id)
        return SyncOutcome("not_synced", size, claimed=True)
    logger.info("file %s was deleted or reclaimed during its upload", claim.file_id)
    return SyncOutcome("gone", size)


def _announce(claim: _Claim, status: str, values: dict[str, Any], kind: str) -> None:
    """Send the domain event for a recorded result (receivers write in our transaction)."""
    user_id, file_id = claim.user_id, claim.file_id
    if status == "synced":
        item_id = values.get("onedrive_id", claim.onedrive_id)
        etag, replaced = values.get("onedrive_etag"), claim.onedrive_id is not None
        events.file_synced.send(
            None,
            user_id=user_id,
            file_id=file_id,
            item_id=item_id,
            etag=etag,
            size=claim.size,
            replaced=replaced,
        )
    elif status == "error":
        reason = values.get("onedrive_error")
        events.file_failed.send(None, user_id=user_id, file_id=file_id, reason=reason, kind=kind)
    elif status == "conflict":
        reason = values.get("onedrive_error")
        events.file_conflict.send(None, user_id=user_id, file_id=file_id, reason=reason)


def _remote_unchanged(claim: _Claim, remote: DriveItem) -> bool:
    """Return whether OneDrive's item is still what we last synced (cTag, else eTag)."""
    if claim.onedrive_ctag and remote.get("cTag"):
        return remote.get("cTag") == claim.onedrive_ctag
    return bool(claim.onedrive_etag) and remote.get("eTag") == claim.onedrive_etag


def _push(claim: _Claim, drive: Drive, target: Target) -> tuple[str, dict[str, Any]]:
    """Upload (or adopt) the claimed file; return the status and the columns to record."""
    reason = validate_name(claim.name)
    if reason:
        raise NameNotAllowedError(reason, claim.name)
    if claim.size > MAX_FILE_SIZE:
        raise FileTooLargeError(claim.size, MAX_FILE_SIZE)
    path = str(target.storage.path(claim.stored_path))
    resume = None
    if claim.upload_url and (claim.upload_expires_at is None or claim.upload_expires_at > utcnow()):
        resume = ResumeState(claim.upload_url, claim.upload_expires_at)
    tracker = _Progress(claim)
    folder_id, resolve = target.folder_id, target.resolve

    def synced(item: DriveItem, note: str | None = None) -> tuple[str, dict[str, Any]]:
        return "synced", synced_fields(item, claim.content_hash, claim.name, note)

    def upload(
        parent_id: str, name: str, behavior: str, if_match: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        result = drive.upload(
            path,
            parent_id,
            name,
            conflict_behavior=behavior,
            if_match=if_match,
            fragment_size=target.fragment_size,
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
        return synced(result.item, note)

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
            return synced(remote)
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
        return synced(existing)
    return "conflict", {
        "onedrive_error": short(
            f'A different file called "{claim.name}" is already in your OneDrive folder. '
            "Choose which to keep."
        )
    }
