"""Changes made on OneDrive's side: the delta check of the sync folder, and what it does.

When: ``integrations.delta_due_at`` is the truth. Connecting schedules the first check (the
initial enumeration); each check schedules the next after :func:`next_interval`
(``DRIVESYNC_DELTA_INTERVAL``, default 15 minutes; a daily backstop while a change-notification
subscription is live); :func:`request_check` makes one due now (the settings page was opened,
at most once a minute; a notification arrived). The scheduler's per-user reconcile runs
:func:`check_if_due`.

How (:func:`check`), after Microsoft's delta and scan-guidance pages (see ``graph/delta.py``):

1. claim the check (a conditional UPDATE moves ``delta_due_at`` a lease ahead: two ticks never
   check one folder at once), clear what a dead check may have staged;
2. stream the pages from the stored deltaLink (or a full enumeration of the folder by id) into
   ``remote_item_changes``, one row per item, the last occurrence winning;
3. only after the page with the ``@odata.deltaLink``, apply everything in one transaction:
   decide each tracked library file's transition (:func:`decide`, a pure function tested as a
   table), update the ``remote_items`` mirror, recount the untracked files, store the cursor;
4. a failure at any point deletes the staged rows and changes nothing else but ``delta_error``
   and a backed-off ``delta_due_at``: a partial listing is never acted on.

``410 Gone`` (the token expired) enumerates again from the ``Location`` Graph gives (or from
scratch) and reconciles against the mirror: items the mirror has and the fresh enumeration does
not are gone. ``resyncChangesUploadDifferences`` means OneDrive is unsure which side is newer:
differences then become conflicts (both versions kept) and missing items are uploaded again,
instead of OneDrive winning.

Nothing is ever deleted, in the library or in OneDrive. A file deleted (or moved out of the
folder) in OneDrive becomes ``remote_deleted`` ("Deleted in OneDrive"), or, by the user's
``remote_policy``, is uploaded again or kept only in the library (``local_only``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, func, insert, or_, select, update

from .. import events, tasks
from ..extensions import db
from ..graph import delta
from ..graph.errors import AuthError, GraphError
from ..graph.types import DriveItem
from ..models import (
    REMOTE_POLICIES,
    File,
    GraphSubscription,
    Integration,
    RemoteItem,
    RemoteItemChange,
    utcnow,
)
from . import autosync, failures, library
from .errors import ServiceError, ValidationError
from .integrations import NotConnected, ReauthRequired, graph_client_for
from .transfer import changed

logger = logging.getLogger(__name__)

REQUEST_GAP = timedelta(seconds=60)  # a page view asks for a check at most once a minute


def request_check(
    user_id: int, now: datetime | None = None, *, min_gap: timedelta = REQUEST_GAP
) -> bool:
    """Make a delta check of the user's folder due now unless one ran within ``min_gap``.

    Commits, then wakes the scheduler. Return whether a check was scheduled (False when not
    connected, reconnect-needed, paused, already due, or checked too recently). Several calls
    in a row coalesce into the one due time, so a burst of notifications makes one check.
    """
    now = now or utcnow()
    moved = changed(
        update(Integration)
        .where(
            Integration.user_id == user_id,
            Integration.status == "active",
            Integration.paused_at.is_(None),
            or_(Integration.delta_due_at.is_(None), Integration.delta_due_at > now),
            or_(
                Integration.delta_checked_at.is_(None),
                Integration.delta_checked_at <= now - min_gap,
            ),
        )
        .values(delta_due_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if moved:
        try:
            tasks.wake_user(user_id, 0)
        except Exception:  # the due time is stored: the next tick runs the check
            logger.warning("changes: could not wake the scheduler for user %s", user_id)
    return bool(moved)


CHECK_LEASE = timedelta(minutes=10)  # a check that dies holding it is retried after this
BACKSTOP = timedelta(days=1)  # with live change notifications, one delta check a day anyway
APPLY_CHUNK = 500  # staged rows applied per query batch (memory stays flat)
REMOTE_DELETED_MESSAGE = "Deleted in OneDrive (or moved out of your sync folder)."
REMOTE_CHANGED_MESSAGE = "OneDrive has a newer version of this file."
BOTH_CHANGED_MESSAGE = library.BOTH_SIDES_CHANGED
UNSURE_MESSAGE = (
    "OneDrive could not tell which version is newer after a full resync. Choose which to keep."
)


# -- when ------------------------------------------------------------------------------------------


def live_subscription(user_id: int, now: datetime | None = None) -> bool:
    """Return whether the user's connection has an unexpired change-notification subscription."""
    now = now or utcnow()
    return (
        db.session.execute(
            select(GraphSubscription.id).where(
                GraphSubscription.user_id == user_id, GraphSubscription.expires_at > now
            )
        ).first()
        is not None
    )


def next_interval(user_id: int, now: datetime | None = None) -> timedelta:
    """Return how long until the next check: the polling period, or the daily backstop."""
    if live_subscription(user_id, now or utcnow()):
        return BACKSTOP
    return timedelta(seconds=int(current_app.config["DELTA_INTERVAL_SECONDS"]))


@dataclass(frozen=True)
class RemoteStatus:
    """What the dashboard says about change detection."""

    checked_at: datetime | None
    mode: str  # "live" (change notifications) | "polling"
    interval_seconds: int
    new_count: int
    error: str | None
    due: bool  # a check is due now (or running)


def status(user_id: int, now: datetime | None = None) -> RemoteStatus | None:
    """Return the user's change-detection status (None when not connected)."""
    now = now or utcnow()
    integration = db.session.execute(
        select(Integration).where(Integration.user_id == user_id)
    ).scalar_one_or_none()
    if integration is None:
        return None
    live = live_subscription(user_id, now)
    return RemoteStatus(
        checked_at=integration.delta_checked_at,
        mode="live" if live else "polling",
        interval_seconds=int(current_app.config["DELTA_INTERVAL_SECONDS"]),
        new_count=integration.remote_new_count,
        error=integration.delta_error,
        due=integration.delta_due_at is not None and integration.delta_due_at <= now,
    )


def set_policy(user_id: int, policy: str) -> Integration:
    """Set what a deletion in OneDrive does to a synced file: ask, upload again, or keep."""
    if policy not in REMOTE_POLICIES:
        raise ValidationError({"policy": "Choose ask, upload again or keep only in the library."})
    if not changed(
        update(Integration).where(Integration.user_id == user_id).values(remote_policy=policy)
    ):
        raise NotConnected()
    db.session.commit()
    return db.session.execute(
        select(Integration).where(Integration.user_id == user_id)
    ).scalar_one()


def untracked_item_ids(user_id: int, item_ids: Iterable[str]) -> set[str]:
    """Return those of ``item_ids`` that are files in the folder no library file tracks."""
    ids = [str(i) for i in item_ids]
    if not ids:
        return set()
    tracked = select(File.onedrive_id).where(File.owner_id == user_id, File.onedrive_id.in_(ids))
    rows = db.session.execute(
        select(RemoteItem.item_id).where(
            RemoteItem.user_id == user_id,
            RemoteItem.item_id.in_(ids),
            RemoteItem.is_folder.is_(False),
            RemoteItem.item_id.not_in(tracked),
        )
    ).scalars()
    return set(rows)


def check_if_due(user_id: int, now: datetime | None = None) -> bool:
    """Run a check when one is due (the scheduler calls this); return whether one ran."""
    now = now or utcnow()
    due = db.session.execute(
        select(Integration.delta_due_at).where(Integration.user_id == user_id)
    ).scalar_one_or_none()
    if due is None or due > now:
        return False
    return check(user_id, now) is not None


# -- what a remote change does -------------------------------------------------------------------


@dataclass(frozen=True)
class Local:
    """What :func:`decide` needs of a library file that tracks a OneDrive item."""

    status: str
    etag: str | None
    ctag: str | None
    quick_xor_hash: str  # the library's current content
    size: int
    content_hash: str
    synced_content_hash: str | None
    skipped_hash: str | None
    name: str | None  # the OneDrive name last recorded
    parent_id: str | None  # the OneDrive parent last seen (mirror), if known


@dataclass(frozen=True)
class Remote:
    """One item's state: as delta reports it now, or as the mirror last saw it."""

    deleted: bool
    etag: str | None = None
    ctag: str | None = None
    quick_xor_hash: str | None = None
    size: int | None = None
    name: str | None = None
    parent_id: str | None = None


@dataclass(frozen=True)
class Transition:
    """What happens to the file: its new state (None: unchanged) and the columns that go with it."""

    status: str | None = None
    kind: str | None = None  # edited | renamed | deleted | restored (history)
    clear_link: bool = False  # forget the OneDrive item (the next upload makes a new one)
    follow: bool = False  # record the item's new name and place
    mark_due: bool = False  # automatic sync should upload it again
    message: str | None = None


NOTHING = Transition()


def _content_changed(local: Local, old: Remote | None, new: Remote) -> bool:
    """Return whether OneDrive's bytes differ from what the library last synced or last saw."""
    if new.etag and new.etag == local.etag:
        return False  # untouched since our own sync recorded it
    if new.quick_xor_hash:
        if new.quick_xor_hash == local.quick_xor_hash:
            return False  # the library's bytes: our own upload, or the same content
        if old is not None and old.quick_xor_hash:
            return new.quick_xor_hash != old.quick_xor_hash
        return True
    # No hash (rare): cTag is the content tag (absent on OneDrive for Business delta), else size.
    if new.ctag:
        base = old.ctag if old is not None and old.ctag else local.ctag
        return base is not None and new.ctag != base
    base_size = old.size if old is not None and old.size is not None else local.size
    return new.size is not None and new.size != base_size


def _moved(local: Local, old: Remote | None, new: Remote) -> bool:
    if new.name and new.name != (old.name if old is not None and old.name else local.name):
        return True
    before = old.parent_id if old is not None else local.parent_id
    return bool(new.parent_id and before and new.parent_id != before)


def decide(
    local: Local, old: Remote | None, new: Remote, policy: str = "ask", *, unsure: bool = False
) -> Transition:
    """Return what a change of the tracked item does to the library file (a pure function).

    ``old`` is the mirror's last view of the item (None on a first enumeration); ``unsure`` is
    a ``resyncChangesUploadDifferences`` resync (OneDrive cannot tell which side is newer).
    A file being uploaded (``syncing``) is left to the transfer, whose own reconcile reads the
    item (eTag/cTag, quickXorHash) before it writes; a ``local_only`` file tracks no item.
    """
    st = local.status
    if st in ("syncing", "local_only"):
        return NOTHING
    if new.deleted:
        if st in ("not_synced", "error"):
            # Not on OneDrive in this version anyway: the upload will make a new item.
            return Transition(clear_link=True, kind="deleted")
        if st == "remote_deleted":
            return NOTHING
        if unsure or policy == "upload":
            return Transition("not_synced", "deleted", clear_link=True, mark_due=True)
        if policy == "keep":
            return Transition("local_only", "deleted", clear_link=True)
        return Transition("remote_deleted", "deleted", message=REMOTE_DELETED_MESSAGE)
    edited = _content_changed(local, old, new)
    follow = _moved(local, old, new)
    if st == "remote_deleted":  # restored from the recycle bin (same id)
        library_moved_on = (
            local.synced_content_hash is not None
            and local.content_hash != local.synced_content_hash
            and new.quick_xor_hash != local.quick_xor_hash
        )
        if library_moved_on:
            # The library was replaced while the item was gone (replacing keeps the question
            # open): OneDrive's copy is older than the library, never "a newer version".
            # Restored as we synced it: the library's turn to upload; else both changed.
            as_synced = bool(new.etag and new.etag == local.etag) or bool(
                new.ctag and local.ctag and new.ctag == local.ctag
            )
            if as_synced:
                return Transition("not_synced", "restored", follow=True, mark_due=True)
            return Transition("conflict", "restored", follow=True, message=BOTH_CHANGED_MESSAGE)
        if edited:
            return Transition("remote_changed", "restored", follow=True,
                              message=REMOTE_CHANGED_MESSAGE)  # fmt: skip
        return Transition("synced", "restored", follow=True)
    if not edited:
        return Transition(kind="renamed", follow=True) if follow else NOTHING
    skipped = local.skipped_hash is not None and local.skipped_hash == local.content_hash
    if st == "synced":
        if unsure:
            return Transition("conflict", "edited", follow=follow, message=UNSURE_MESSAGE)
        return Transition("remote_changed", "edited", follow=follow, message=REMOTE_CHANGED_MESSAGE)
    if st in ("not_synced", "error") and not skipped:
        return Transition("conflict", "edited", follow=follow, message=BOTH_CHANGED_MESSAGE)
    # conflict / remote_changed stay as they are (their actions read OneDrive's latest);
    # a skipped file keeps OneDrive's copy by the user's choice.
    return Transition(kind="edited", follow=follow)


# -- the check -----------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """What one check did."""

    requests: int = 0
    items: int = 0
    transitions: int = 0
    new_count: int = 0
    resynced: bool = False


def _remote_of(item: DriveItem) -> dict[str, Any]:
    """Return the staged columns of one delta item."""
    file_facet = item.get("file") or {}
    hashes = file_facet.get("hashes") or {}
    parent = item.get("parentReference") or {}
    size = item.get("size")
    return {
        "item_id": str(item["id"])[:128],
        "deleted": "deleted" in item,
        "parent_id": (str(parent["id"])[:128] if parent.get("id") else None),
        "name": (str(item["name"])[:255] if item.get("name") else None),
        "is_folder": "folder" in item or "root" in item,
        "size": int(size) if isinstance(size, int) else 0,
        "etag": (str(item["eTag"])[:255] if item.get("eTag") else None),
        "ctag": (str(item["cTag"])[:255] if item.get("cTag") else None),
        "quick_xor_hash": (
            str(hashes["quickXorHash"])[:40] if hashes.get("quickXorHash") else None
        ),
        "modified_at": None,
    }


def _claim(user_id: int, now: datetime) -> Integration | None:
    """Take the check: move the due time a lease ahead, if it is still due and nobody has it."""
    got = changed(
        update(Integration)
        .where(
            Integration.user_id == user_id,
            Integration.status == "active",
            Integration.delta_due_at <= now,
        )
        .values(delta_due_at=now + CHECK_LEASE)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if not got:
        return None
    return db.session.execute(
        select(Integration).where(Integration.user_id == user_id)
    ).scalar_one()


def _clear_staging(integration_id: int, user_id: int) -> None:
    db.session.execute(
        delete(RemoteItemChange).where(
            RemoteItemChange.integration_id == integration_id, RemoteItemChange.user_id == user_id
        )
    )


def _stage(integration: Integration, page: Sequence[DriveItem], seq: int) -> int:
    """Stage one page (last occurrence wins, within the page and across pages); commit."""
    rows: dict[str, dict[str, Any]] = {}
    for item in page:
        row = _remote_of(item)
        rows[row["item_id"]] = row  # the last occurrence wins
    if not rows:
        return seq
    db.session.execute(
        delete(RemoteItemChange).where(
            RemoteItemChange.integration_id == integration.id,
            RemoteItemChange.user_id == integration.user_id,
            RemoteItemChange.item_id.in_(list(rows)),
        )
    )
    values = []
    for row in rows.values():
        seq += 1
        values.append({**row, "seq": seq, "user_id": integration.user_id,
                       "integration_id": integration.id})  # fmt: skip
    db.session.execute(insert(RemoteItemChange), values)
    db.session.commit()
    return seq


def check(user_id: int, now: datetime | None = None) -> CheckResult | None:
    """Check the user's OneDrive folder for changes and apply them (see the module docstring).

    Return what it did, or None when no check was due or it could not run (then
    ``delta_error`` says why and a later check is scheduled).
    """
    now = now or utcnow()
    integration = _claim(user_id, now)
    if integration is None or not integration.folder_id:
        return None
    integration_id = integration.id
    result = CheckResult()
    try:
        client, _ = graph_client_for(user_id)
    except (NotConnected, ReauthRequired):
        db.session.rollback()
        return None
    try:
        link = integration.delta_link
        scope_item = delta.delta_scope(integration.folder_id, integration.drive_type)
        if link is not None and not delta.is_delta_link(link, client.base_url, scope_item):
            # A cursor of another folder or Graph (the folder or GRAPH_URL changed): it would
            # be refused page after page; enumerate this folder afresh instead.
            logger.info("delta of user %s: stored cursor is not this folder's; starting over",
                        user_id)  # fmt: skip
            link = None
        full = link is None
        start = link or delta.folder_delta_url(
            client, integration.drive_id, integration.folder_id, integration.drive_type
        )
        unsure = False
        try:
            cursor = _enumerate(client, integration, start, result)
        except delta.DeltaGone as gone:
            logger.info("delta of user %s: 410 %s; enumerating again", user_id, gone.kind)
            _clear_staging(integration_id, user_id)
            db.session.commit()
            full, unsure, result.resynced = True, gone.upload_differences, True
            start = gone.location or delta.folder_delta_url(
                client, integration.drive_id, integration.folder_id, integration.drive_type
            )
            cursor = _enumerate(client, integration, start, result)
        _apply(integration, cursor, full=full, unsure=unsure, now=now, result=result)
    except (GraphError, ServiceError, OSError) as exc:
        db.session.rollback()
        _clear_staging(integration_id, user_id)
        _failed(integration_id, user_id, exc, now)
        return None
    except BaseException:
        db.session.rollback()
        _clear_staging(integration_id, user_id)
        db.session.commit()
        raise
    finally:
        client.close()
    logger.info(
        "delta of user %s: %d request(s), %d item(s), %d file(s) changed state, %d new",
        user_id, result.requests, result.items, result.transitions, result.new_count,
    )  # fmt: skip
    return result


def _enumerate(client: Any, integration: Integration, start: str, result: CheckResult) -> str:
    """Stage every page from ``start``; return the deltaLink (the new cursor)."""
    _clear_staging(integration.id, integration.user_id)
    db.session.commit()
    seq = 0
    scope_item = delta.delta_scope(str(integration.folder_id), integration.drive_type)
    for page in delta.pages(client, start, scope_item):
        result.requests += 1
        result.items += len(page.items)
        seq = _stage(integration, page.items, seq)
        if page.delta_link:
            return page.delta_link
    raise GraphError("the delta feed ended without a deltaLink", code="badDeltaPage")


def _failed(integration_id: int, user_id: int, exc: BaseException, now: datetime) -> None:
    """Record a failed check and schedule the next with backoff; nothing else changes."""
    if isinstance(exc, AuthError | ReauthRequired):
        message = "OneDrive asked to be reconnected before it can be checked for changes."
    elif isinstance(exc, GraphError):
        message = f"Could not check OneDrive for changes: {exc.human_message()}"
    else:
        message = "Could not check OneDrive for changes (network problem)."
    failures_so_far = (
        db.session.execute(
            select(Integration.delta_failures).where(Integration.id == integration_id)
        ).scalar_one_or_none()
        or 0
    )
    wait = failures.backoff_delay(failures_so_far + 1, base=failures.retry_base())
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        wait = max(wait, float(retry_after))
    db.session.execute(
        update(Integration)
        .where(Integration.id == integration_id, Integration.user_id == user_id)
        .values(
            delta_error=message[:500],
            delta_failures=Integration.delta_failures + 1,
            delta_due_at=now + timedelta(seconds=wait),
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    logger.info("delta of user %s failed (%s); next try in %.0f s", user_id,
                type(exc).__name__, wait)  # fmt: skip


# -- applying a complete enumeration ---------------------------------------------------------------


def _mirror_remote(row: Any) -> Remote:
    return Remote(False, row.etag, row.ctag, row.quick_xor_hash, row.size, row.name, row.parent_id)


def _staged_remote(row: Any) -> Remote:
    return Remote(row.deleted, row.etag, row.ctag, row.quick_xor_hash,
                  row.size if not row.deleted else None, row.name, row.parent_id)  # fmt: skip


def _apply(
    integration: Integration,
    cursor: str,
    *,
    full: bool,
    unsure: bool,
    now: datetime,
    result: CheckResult,
) -> None:
    """Apply the staged enumeration in one transaction (commit at the end only)."""
    user_id, integration_id = integration.user_id, integration.id
    policy = integration.remote_policy
    staged = RemoteItemChange.__table__
    mirror = RemoteItem.__table__
    if full:
        _stage_missing(integration, now)
    scope = _scope_folders(integration)
    _stage_orphans(integration, scope)
    last_id = 0
    renamed: list[int] = []
    moved_folders: set[str] = set()
    while True:
        chunk = list(
            db.session.execute(
                select(staged)
                .where(staged.c.integration_id == integration_id, staged.c.id > last_id)
                .order_by(staged.c.id)
                .limit(APPLY_CHUNK)
            )
        )
        if not chunk:
            break
        last_id = chunk[-1].id
        ids = [r.item_id for r in chunk]
        tracked_ids: set[str] = set(
            str(i)
            for i in db.session.execute(
                select(File.onedrive_id).where(File.owner_id == user_id, File.onedrive_id.in_(ids))
            ).scalars()
        )
        old = {
            r.item_id: r
            for r in db.session.execute(
                select(mirror).where(
                    mirror.c.integration_id == integration_id, mirror.c.item_id.in_(ids)
                )
            )
        }
        files = list(
            db.session.execute(
                select(File).where(File.owner_id == user_id, File.onedrive_id.in_(ids))
            ).scalars()
        )
        rows = _in_scope(chunk, integration.folder_id, scope, set(old) | tracked_ids)
        by_id = {r.item_id: r for r in rows}
        for f in files:
            new = by_id[str(f.onedrive_id)]
            m = old.get(new.item_id)
            local = Local(
                status=f.onedrive_sync_status,
                etag=f.onedrive_etag,
                ctag=f.onedrive_ctag,
                quick_xor_hash=f.quick_xor_hash,
                size=f.size,
                content_hash=f.content_hash,
                synced_content_hash=f.synced_content_hash,
                skipped_hash=f.skipped_hash,
                name=f.onedrive_name,
                parent_id=m.parent_id if m is not None else None,
            )
            t = decide(local, _mirror_remote(m) if m is not None else None, _staged_remote(new),
                       policy, unsure=unsure)  # fmt: skip
            if _transition(f, t, new, now):
                result.transitions += 1
            if t.follow:
                renamed.append(f.id)
        for r in rows:
            m = old.get(r.item_id)
            if (
                r.is_folder
                and not r.deleted
                and m is not None
                and ((r.name and r.name != m.name) or (r.parent_id and r.parent_id != m.parent_id))
            ):
                moved_folders.add(r.item_id)
        _update_mirror(integration, rows)
    if moved_folders:
        # "Renaming a folder doesn't result in any descendants of the folder being returned"
        # (driveitem-delta): the files under a renamed or moved subfolder are not in the feed,
        # yet their OneDrive path changed. Record it for each tracked file below one.
        renamed.extend(_files_below(integration, moved_folders))
    for file_id in dict.fromkeys(renamed):
        _record_path(integration, file_id)
    new_count = _count_untracked(integration)
    result.new_count = new_count
    db.session.execute(
        delete(RemoteItemChange).where(
            RemoteItemChange.integration_id == integration_id, RemoteItemChange.user_id == user_id
        )
    )
    db.session.execute(
        update(Integration)
        .where(Integration.id == integration_id, Integration.user_id == user_id)
        .values(
            delta_link=cursor,
            delta_checked_at=now,
            delta_error=None,
            delta_failures=0,
            remote_new_count=new_count,
            delta_due_at=now + next_interval(user_id, now),
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


@dataclass(frozen=True)
class _Row:
    """A staged item as the apply step uses it (possibly turned into a deletion)."""

    item_id: str
    deleted: bool
    parent_id: str | None
    name: str | None
    is_folder: bool
    size: int
    etag: str | None
    ctag: str | None
    quick_xor_hash: str | None
    modified_at: datetime | None


def _scope_folders(integration: Integration) -> set[str]:
    """Return the ids of the sync folder and every folder below it, as this check leaves them.

    Parents come from the staged pages where an item changed, else from the mirror. A business
    drive is read through the drive root's delta (Graph documents delta on the root), so the
    pages hold the whole drive: this is what keeps the rest of it out.
    """
    parents: dict[str, str | None] = {}
    for item_id, parent_id in db.session.execute(
        select(RemoteItem.item_id, RemoteItem.parent_id).where(
            RemoteItem.integration_id == integration.id,
            RemoteItem.user_id == integration.user_id,
            RemoteItem.is_folder.is_(True),
        )
    ):
        parents[item_id] = parent_id
    for item_id, parent_id, deleted in db.session.execute(
        select(RemoteItemChange.item_id, RemoteItemChange.parent_id, RemoteItemChange.deleted)
        .where(
            RemoteItemChange.integration_id == integration.id,
            RemoteItemChange.user_id == integration.user_id,
            RemoteItemChange.is_folder.is_(True),
        )
        .order_by(RemoteItemChange.id)
    ):
        if deleted:
            parents.pop(item_id, None)
        else:
            parents[item_id] = parent_id
    root = str(integration.folder_id)
    inside: set[str] = {root}
    outside: set[str] = set()
    for folder in parents:
        path: list[str] = []
        cur: str | None = folder
        while cur is not None and cur not in inside and cur not in outside and len(path) < 256:
            path.append(cur)
            cur = parents.get(cur)
        (inside if cur in inside else outside).update(path)
    return inside


def _stage_orphans(integration: Integration, scope: set[str]) -> None:
    """Stage as deleted the mirror's items whose folder left the sync folder (not re-listed)."""
    staged_ids = select(RemoteItemChange.item_id).where(
        RemoteItemChange.integration_id == integration.id,
        RemoteItemChange.user_id == integration.user_id,
    )
    rows = [
        {"user_id": integration.user_id, "integration_id": integration.id, "item_id": item_id,
         "seq": -1, "deleted": True, "is_folder": is_folder, "size": 0}
        for item_id, parent_id, is_folder in db.session.execute(
            select(RemoteItem.item_id, RemoteItem.parent_id, RemoteItem.is_folder).where(
                RemoteItem.integration_id == integration.id,
                RemoteItem.user_id == integration.user_id,
                RemoteItem.item_id.not_in(staged_ids),
            )
        )
        if item_id != integration.folder_id and parent_id not in scope
    ]  # fmt: skip
    for start in range(0, len(rows), APPLY_CHUNK):
        db.session.execute(insert(RemoteItemChange), rows[start : start + APPLY_CHUNK])


def _in_scope(
    chunk: Sequence[Any], root: str | None, scope: set[str], known: set[str]
) -> list[_Row]:
    """Keep the chunk's items inside the sync folder; one that left it reads as deleted."""
    out: list[_Row] = []
    for r in chunk:
        inside = r.item_id == root or r.parent_id in scope
        if r.deleted or inside:
            deleted = bool(r.deleted)
        elif r.item_id in known:
            deleted = True  # moved out of the folder: deleted, as far as the folder goes
        else:
            continue  # elsewhere in the drive: none of our business
        out.append(_Row(r.item_id, deleted, r.parent_id, r.name, bool(r.is_folder), int(r.size),
                        r.etag, r.ctag, r.quick_xor_hash, r.modified_at))  # fmt: skip
    return out


def _stage_missing(integration: Integration, now: datetime) -> None:
    """Stage as deleted what a full enumeration did not list but we knew of.

    That is every item of the mirror, and every item a library file tracks (synced before this
    check began: a file whose upload ends during the enumeration is simply not in it yet).
    """
    staged_ids = select(RemoteItemChange.item_id).where(
        RemoteItemChange.integration_id == integration.id,
        RemoteItemChange.user_id == integration.user_id,
    )
    missing: dict[str, bool] = {}
    for item_id, is_folder in db.session.execute(
        select(RemoteItem.item_id, RemoteItem.is_folder).where(
            RemoteItem.integration_id == integration.id,
            RemoteItem.user_id == integration.user_id,
            RemoteItem.item_id.not_in(staged_ids),
        )
    ):
        missing[item_id] = is_folder
    for (tracked_id,) in db.session.execute(
        select(File.onedrive_id).where(
            File.owner_id == integration.user_id,
            File.onedrive_id.is_not(None),
            File.onedrive_id.not_in(staged_ids),
            or_(File.onedrive_synced_at.is_(None), File.onedrive_synced_at < now),
        )
    ):
        missing.setdefault(str(tracked_id), False)
    rows = [
        {"user_id": integration.user_id, "integration_id": integration.id, "item_id": item_id,
         "seq": -1, "deleted": True, "is_folder": is_folder, "size": 0}
        for item_id, is_folder in missing.items()
    ]  # fmt: skip
    for start in range(0, len(rows), APPLY_CHUNK):
        db.session.execute(insert(RemoteItemChange), rows[start : start + APPLY_CHUNK])


def _transition(f: File, t: Transition, new: Any, now: datetime) -> bool:
    """Write one file's transition (conditional on the state it was decided from)."""
    if t is NOTHING or (t.status is None and not t.clear_link and not t.follow):
        if t.kind == "edited":  # e.g. a conflict whose OneDrive side changed again
            events.file_remote_changed.send(None, user_id=f.owner_id, file_id=f.id,
                                            change="edited", item_id=new.item_id)  # fmt: skip
        return False
    values: dict[str, Any] = {}
    if t.status is not None:
        values["onedrive_sync_status"] = t.status
        values["onedrive_error"] = t.message
        # A failure's retry schedule is over: the file waits for the user or the next sync.
        values.update(next_attempt_at=None, failure_kind=None, failure_code=None,
                      failing_since=None, sync_attempts=0)  # fmt: skip
    if t.status == "synced":
        values["onedrive_etag"] = new.etag
    if t.clear_link:
        values.update(
            onedrive_id=None, onedrive_etag=None, onedrive_ctag=None, onedrive_path=None,
            onedrive_web_url=None, onedrive_name=None, synced_content_hash=None,
            upload_url=None, upload_expires_at=None, bytes_sent=0,
        )  # fmt: skip
    elif t.follow and new.name:
        values["onedrive_name"] = new.name
    moved = changed(
        update(File)
        .where(
            File.id == f.id,
            File.owner_id == f.owner_id,
            File.onedrive_sync_status == f.onedrive_sync_status,
            # ... and on the content and item it was decided from: a library file replaced
            # (remote_deleted and local_only keep their state then) or relinked meanwhile is
            # decided again by the next check, never with a stale reading.
            File.content_hash == f.content_hash,
            File.onedrive_id == f.onedrive_id,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not moved:
        return False  # the engine took the file meanwhile: its own reconcile decides
    if t.mark_due:
        autosync.mark_due(f.owner_id, now)
    if t.kind:
        detail = new.name if t.kind in ("renamed", "restored") else None
        events.file_remote_changed.send(None, user_id=f.owner_id, file_id=f.id, change=t.kind,
                                        item_id=new.item_id, name=detail)  # fmt: skip
    return t.status is not None


def _update_mirror(integration: Integration, chunk: Sequence[Any]) -> None:
    """Bring the mirror up to date with one chunk of staged items."""
    ids = [r.item_id for r in chunk]
    db.session.execute(
        delete(RemoteItem).where(
            RemoteItem.integration_id == integration.id,
            RemoteItem.user_id == integration.user_id,
            RemoteItem.item_id.in_(ids),
        )
    )
    live = [
        {
            "user_id": integration.user_id,
            "integration_id": integration.id,
            "item_id": r.item_id,
            "parent_id": r.parent_id,
            "name": r.name or "",
            "is_folder": r.is_folder,
            "size": r.size,
            "etag": r.etag,
            "ctag": r.ctag,
            "quick_xor_hash": r.quick_xor_hash,
            "modified_at": r.modified_at,
        }
        for r in chunk
        if not r.deleted
    ]
    if live:
        db.session.execute(insert(RemoteItem), live)


def _files_below(integration: Integration, folders: set[str]) -> list[int]:
    """Return the ids of the library files whose item lies below one of ``folders`` (mirror)."""
    parents: dict[str, str | None] = dict(
        db.session.execute(
            select(RemoteItem.item_id, RemoteItem.parent_id).where(
                RemoteItem.integration_id == integration.id,
                RemoteItem.user_id == integration.user_id,
            )
        ).all()
    )
    below: list[int] = []
    for file_id, item_id in db.session.execute(
        select(File.id, File.onedrive_id).where(
            File.owner_id == integration.user_id, File.onedrive_id.is_not(None)
        )
    ).all():
        cur = parents.get(str(item_id))
        for _ in range(64):  # deeper than any sync folder we make; stops a cycle
            if cur is None or cur == integration.folder_id:
                break
            if cur in folders:
                below.append(file_id)
                break
            cur = parents.get(cur)
    return below


def _record_path(integration: Integration, file_id: int) -> None:
    """Record where a followed file now is in OneDrive (its path from the mirror's parents)."""
    f = db.session.get(File, file_id)
    if f is None or f.owner_id != integration.user_id or not f.onedrive_id:
        return
    names: list[str] = []
    cur: str | None = f.onedrive_id
    for _ in range(64):  # deeper than any sync folder we make; stops a cycle
        if cur is None or cur == integration.folder_id:
            break
        row = db.session.execute(
            select(RemoteItem.parent_id, RemoteItem.name).where(
                RemoteItem.integration_id == integration.id,
                RemoteItem.user_id == integration.user_id,
                RemoteItem.item_id == cur,
            )
        ).first()
        if row is None:
            return
        names.append(row.name)
        cur = row.parent_id
    path = "/" + "/".join([integration.folder_path.strip("/"), *reversed(names)]).strip("/")
    db.session.execute(
        update(File)
        .where(File.id == f.id, File.owner_id == integration.user_id)
        .values(
            onedrive_path=path[:1024],
            onedrive_name=names[0][:255] if names else f.onedrive_name,
        )
        .execution_options(synchronize_session=False)
    )


def _count_untracked(integration: Integration) -> int:
    tracked = select(File.onedrive_id).where(
        File.owner_id == integration.user_id, File.onedrive_id.is_not(None)
    )
    return int(
        db.session.execute(
            select(func.count())
            .select_from(RemoteItem)
            .where(
                RemoteItem.integration_id == integration.id,
                RemoteItem.user_id == integration.user_id,
                RemoteItem.is_folder.is_(False),
                RemoteItem.item_id.not_in(tracked),
            )
        ).scalar_one()
    )
