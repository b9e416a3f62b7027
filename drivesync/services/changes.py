"""Changes made on OneDrive's side: when to check the sync folder's delta feed.

:func:`request_check` asks for a check soon (the settings page was opened, a change
notification arrived): it moves ``integrations.delta_due_at`` to now, commits, and sends a
wake-up; the scheduler's per-user reconcile runs the check. The due time is the truth: a lost
wake-up only delays the check to the next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, func, or_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import undefer

from .. import events, tasks
from ..extensions import db
from ..graph.client import GraphClient
from ..graph.delta import RESYNC_UPLOAD, ResyncNeeded, is_delta_link, iter_pages
from ..graph.errors import AuthError, GraphError
from ..graph.types import BUSINESS_DRIVE_TYPES, DriveItem
from ..models import (
    REMOTE_POLICIES,
    File,
    GraphSubscription,
    Integration,
    RemoteItem,
    RemoteItemChange,
    utcnow,
)
from . import autosync, failures
from .errors import ServiceError, ValidationError
from .integrations import (
    PROVIDER,
    NotConnected,
    get_integration,
    graph_client_for,
    mark_needs_reauth,
)
from .transfer import BOTH_CHANGED_MESSAGE, changed, reauth_message, short

logger = logging.getLogger(__name__)

REQUEST_GAP = timedelta(seconds=60)  # a page view asks for a check at most once a minute
BACKSTOP_SECONDS = 24 * 3600  # with live change notifications, one check a day as a backstop
PAGE_SIZE = 1000  # items per delta page asked for (Graph may answer fewer)


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


# -- the transition table ----------------------------------------------------------------------

# What a complete delta says happened to the item a library file tracks.
EDITED = "edited"  # content changed (cTag/quickXorHash differ from what the file last synced)
MOVED = "moved"  # renamed or moved inside the sync folder, content as we synced it
SAME = "same"  # nothing we care about (our own upload echoing back, a metadata-only change)
DELETED = "deleted"  # deleted, or moved out of the sync folder (it arrives as deleted)
REMOTE_CHANGES = (EDITED, MOVED, SAME, DELETED)


@dataclass(frozen=True)
class Decision:
    """What to do to one library file: its new status (None: unchanged) and side effects."""

    status: str | None = None
    follow: bool = False  # record the item's new name and path
    clear_ids: bool = False  # forget the OneDrive item (upload again makes a new one)
    mark_due: bool = False  # automatic sync should take the file
    event: str | None = None  # "remote_changed" | "remote_deleted" | "remote_moved" | "conflict"


NOTHING = Decision()


def decide(
    change: str, state: str, *, tracked: bool, library_changed: bool, policy: str
) -> Decision:
    """Return what a remote ``change`` does to a file in ``state`` (a pure function).

    ``tracked``: the file has an ``onedrive_id`` (a file without one never sees a remote change);
    ``library_changed``: its content differs from what it last synced; ``policy``: the user's
    ``remote_policy`` for deletions (ask | upload | keep). Nothing is ever deleted: the worst a
    remote change does is ask the user.

    - ``syncing``: left to the transfer's own reconcile. Before it writes, the transfer reads the
      item again: a 404 uploads it as a new item, a changed cTag/eTag makes it ``conflict`` (or
      keeps OneDrive's edit when the library is unchanged), a rename is followed because it
      uploads into the item's current parent under its current name, and If-Match on the eTag
      just read closes the race. Touching the row here would fight the worker's claim.
    - ``local_only``: the user chose to keep it off OneDrive; sticky until *Upload again*.
    - ``remote_deleted`` and the item is back (restored from the recycle bin: same id): back to
      ``synced`` when the content is what we synced, else as an edit.
    """
    if not tracked or state in ("syncing", "local_only"):
        return NOTHING
    if change == DELETED:
        if state == "remote_deleted":
            return NOTHING
        if policy == "upload":
            return Decision("not_synced", clear_ids=True, mark_due=True, event="remote_deleted")
        if policy == "keep":
            return Decision("local_only", clear_ids=True, event="remote_deleted")
        return Decision("remote_deleted", event="remote_deleted")
    if change == EDITED:
        if state == "conflict":
            return Decision(follow=True)
        if library_changed:
            return Decision("conflict", follow=True, event="conflict")
        if state == "remote_changed":
            return Decision(follow=True)
        return Decision("remote_changed", follow=True, event="remote_changed")
    if state == "remote_deleted":  # restored, content as we synced it
        return Decision(
            "not_synced" if library_changed else "synced",
            follow=True,
            mark_due=library_changed,
            event="remote_moved" if change == MOVED else None,
        )
    if change == MOVED:
        return Decision(follow=True, event="remote_moved")
    return Decision(follow=True) if change == SAME else NOTHING


def classify(
    *, deleted: bool, remote_ctag: str | None, remote_hash: str | None, remote_etag: str | None,
    parent_id: str | None, name: str | None, synced_ctag: str | None, synced_etag: str | None,
    library_hash: str, known_parent: str | None, known_name: str | None,
) -> str:  # fmt: skip
    """Return which of :data:`REMOTE_CHANGES` the item's new state is for the file.

    Our own uploads appear in the delta too: an item whose cTag equals what the file last
    synced, or whose quickXorHash equals the library's content, is not a remote edit. Without
    either (Business computes the hash a few seconds late), the eTag decides, and a changed
    eTag with the same name and parent is an edit.
    """
    if deleted:
        return DELETED
    if remote_ctag and synced_ctag:
        same_content = remote_ctag == synced_ctag or (
            remote_hash is not None and remote_hash == library_hash
        )
    elif remote_hash:
        same_content = remote_hash == library_hash
    else:
        same_content = bool(synced_etag) and remote_etag == synced_etag
        if not same_content and (parent_id != known_parent or name != known_name):
            same_content = True  # an eTag also changes on a rename: call it a move, not an edit
    if not same_content:
        return EDITED
    if (known_parent is not None and parent_id != known_parent) or (
        known_name is not None and name != known_name
    ):
        return MOVED
    return SAME


# -- the check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteStatus:
    """What the settings page and dashboard say about change detection."""

    checked_at: datetime | None
    mode: str  # "live" (change notifications) | "polling"
    interval_seconds: int
    new_count: int
    error: str | None
    due: datetime | None


@dataclass(frozen=True)
class CheckResult:
    """What one complete check saw and did."""

    requests: int
    items: int
    resync: str | None
    changed_files: int
    new_count: int


def _subscription_live(user_id: int, now: datetime) -> bool:
    return (
        db.session.execute(
            db.select(GraphSubscription.id).where(
                GraphSubscription.user_id == user_id, GraphSubscription.expires_at > now
            )
        ).first()
        is not None
    )


def next_interval(user_id: int, now: datetime | None = None) -> int:
    """Seconds until the next check: ``DELTA_INTERVAL_SECONDS``, or a daily backstop when a
    live change-notification subscription tells us of changes as they happen."""
    if _subscription_live(user_id, now or utcnow()):
        return BACKSTOP_SECONDS
    return int(current_app.config["DELTA_INTERVAL_SECONDS"])


def status(user_id: int, now: datetime | None = None) -> RemoteStatus:
    """Return the user's change-detection status (NotConnected when there is no connection)."""
    now = now or utcnow()
    integration = get_integration(user_id)
    if integration is None:
        raise NotConnected()
    live = _subscription_live(user_id, now)
    return RemoteStatus(
        checked_at=integration.delta_checked_at,
        mode="live" if live else "polling",
        interval_seconds=next_interval(user_id, now),
        new_count=integration.remote_new_count or 0,
        error=integration.delta_error,
        due=integration.delta_due_at,
    )


def untracked_item_ids(user_id: int, item_ids: Iterable[str]) -> set[str]:
    """Return those of ``item_ids`` that are files of the folder no library file tracks."""
    ids = [str(i) for i in item_ids]
    if not ids:
        return set()
    in_folder = set(
        db.session.execute(
            db.select(RemoteItem.item_id).where(
                RemoteItem.user_id == user_id,
                RemoteItem.item_id.in_(ids),
                RemoteItem.is_folder.is_(False),
            )
        ).scalars()
    )
    tracked = set(
        db.session.execute(
            db.select(File.onedrive_id).where(File.owner_id == user_id, File.onedrive_id.in_(ids))
        ).scalars()
    )
    return in_folder - tracked


def set_policy(user_id: int, policy: str) -> Integration:
    """Set what a deletion in OneDrive does to a synced file: ask, upload again, keep."""
    if policy not in REMOTE_POLICIES:
        raise ValidationError({"policy": "Choose ask, upload again or keep only in the library."})
    integration = get_integration(user_id)
    if integration is None:
        raise NotConnected()
    integration.remote_policy = policy
    db.session.commit()
    return integration


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _staged_row(user_id: int, integration_id: int, item: DriveItem, seq: int) -> dict[str, Any]:
    hashes = (item.get("file") or {}).get("hashes") or {}
    name = item.get("name")
    return {
        "user_id": user_id,
        "integration_id": integration_id,
        "item_id": str(item.get("id")),
        "seq": seq,
        # Deleted items carry the deleted facet and, on business drives, no name.
        "deleted": "deleted" in item,
        "parent_id": (item.get("parentReference") or {}).get("id"),
        "name": str(name)[:255] if name else None,
        "is_folder": "folder" in item or "package" in item,
        "size": int(item.get("size") or 0),
        "etag": item.get("eTag"),
        "ctag": item.get("cTag"),
        "quick_xor_hash": hashes.get("quickXorHash"),
        "modified_at": _parse_time(item.get("lastModifiedDateTime")),
    }


_STAGED_COLUMNS = (
    "seq", "deleted", "parent_id", "name", "is_folder", "size", "etag", "ctag",
    "quick_xor_hash", "modified_at",
)  # fmt: skip
_MIRROR_COLUMNS = (
    "parent_id", "name", "is_folder", "size", "etag", "ctag", "quick_xor_hash", "modified_at",
)  # fmt: skip


def _insert(table: Any) -> Any:
    """Return the dialect's INSERT (both SQLite and PostgreSQL have ON CONFLICT)."""
    if db.session.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


def _stage(user_id: int, integration_id: int, items: list[DriveItem], seq: int) -> int:
    """Upsert one page into ``remote_item_changes`` (last occurrence wins); return the next seq."""
    rows: dict[str, dict[str, Any]] = {}
    for item in items:
        if not item.get("id"):
            continue
        rows[str(item["id"])] = _staged_row(user_id, integration_id, item, seq)
        seq += 1
    if rows:
        stmt = _insert(RemoteItemChange).values(list(rows.values()))
        stmt = stmt.on_conflict_do_update(
            index_elements=["integration_id", "item_id"],
            set_={c: getattr(stmt.excluded, c) for c in _STAGED_COLUMNS},
        )
        db.session.execute(stmt)
    return seq


def _discard_staged(integration_id: int) -> None:
    db.session.execute(
        delete(RemoteItemChange)
        .where(RemoteItemChange.integration_id == integration_id)
        .execution_options(synchronize_session=False)
    )


def check(user_id: int, now: datetime | None = None) -> CheckResult | None:
    """Run one delta check of the user's sync folder; return what it did (None: not connected).

    Pages are staged as they stream in (committed page by page: memory stays flat in the
    folder's size), and applied in one transaction only after the ``@odata.deltaLink``. Any
    failure discards the staged rows and records only the error and a backoff; an AuthError
    marks the connection *Reconnect needed* (the token provider already did, this is idempotent).
    """
    now = now or utcnow()
    integration = db.session.execute(
        db.select(Integration)
        .options(undefer(Integration.delta_link))
        .where(Integration.user_id == user_id, Integration.provider == PROVIDER)
    ).scalar_one_or_none()
    if integration is None or not integration.active or not integration.folder_id:
        return None
    integration_id, folder_id = integration.id, integration.folder_id
    start, policy = integration.delta_link, integration.remote_policy
    drive_id = integration.drive_id if integration.drive_type in BUSINESS_DRIVE_TYPES else None
    _discard_staged(integration_id)  # a crashed check's leftovers
    db.session.commit()
    client: GraphClient | None = None
    counter = _Counter()
    resync: str | None = None
    try:
        client, _ = graph_client_for(user_id)
        client.session.hooks["response"].append(counter)
        try:
            delta_link, items = _enumerate(
                client, user_id, integration_id, folder_id, start, drive_id
            )
        except ResyncNeeded as gone:
            # https://learn.microsoft.com/graph/api/driveitem-delta (410 Gone): the token is
            # no longer valid; enumerate the folder again from the Location (or from scratch)
            # and reconcile against the mirror. A resync is a full re-enumeration: what it does
            # not list is no longer in the folder ("replace any local items with the server's
            # version (including deletes)"). The mirror upserts by id: nothing is duplicated.
            _discard_staged(integration_id)
            db.session.commit()
            resync = gone.resync_code
            restart = gone.location
            if restart and not is_delta_link(restart, client.base_url, folder_id):
                restart = None
            delta_link, items = _enumerate(
                client, user_id, integration_id, folder_id, restart, drive_id
            )
        full = start is None or resync is not None
        result = _apply(user_id, integration_id, folder_id, policy, delta_link, full, resync, now)
    except Exception as exc:
        db.session.rollback()
        _fail(user_id, integration_id, exc, now)
        if isinstance(exc, AuthError):
            mark_needs_reauth(user_id, reauth_message(exc))
        if isinstance(exc, (GraphError, ServiceError, OSError)):
            logger.info("changes: check of user %s failed (%s)", user_id, type(exc).__name__)
            return None
        raise
    finally:
        if client is not None:
            client.close()
    logger.info(
        "changes: user %s checked (%d request(s), %d item(s), %d file(s) changed, resync %s)",
        user_id, counter.count, items, result[0], resync,
    )  # fmt: skip
    return CheckResult(counter.count, items, resync, result[0], result[1])


class _Counter:
    """A response hook counting the check's Graph requests (for the log and the benchmark)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, resp: Any, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return resp


def _enumerate(
    client: GraphClient, user_id: int, integration_id: int, folder_id: str,
    start: str | None, drive_id: str | None,
) -> tuple[str, int]:  # fmt: skip
    seq, items, delta_link = 0, 0, ""
    for page in iter_pages(client, folder_id, start=start, drive_id=drive_id, top=PAGE_SIZE):
        seq = _stage(user_id, integration_id, page.items, seq)
        items += len(page.items)
        db.session.commit()  # staged rows are invisible to everything else until applied
        if page.delta_link:
            delta_link = page.delta_link
    return delta_link, items


def _fail(user_id: int, integration_id: int, exc: BaseException, now: datetime) -> None:
    _discard_staged(integration_id)
    failures_before = (
        db.session.execute(
            db.select(Integration.delta_failures).where(Integration.id == integration_id)
        ).scalar_one_or_none()
        or 0
    )
    retry_after = exc.retry_after if isinstance(exc, GraphError) else None
    wait = failures.backoff_delay(failures_before + 1, retry_after=retry_after)
    message = exc.human_message() if isinstance(exc, GraphError) else str(exc) or type(exc).__name__
    db.session.execute(
        update(Integration)
        .where(Integration.id == integration_id, Integration.user_id == user_id)
        .values(
            delta_error=short(f"OneDrive could not be checked for changes: {message}"),
            delta_failures=Integration.delta_failures + 1,
            delta_due_at=now + timedelta(seconds=wait),
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def _apply(
    user_id: int, integration_id: int, folder_id: str, policy: str, delta_link: str,
    full: bool, resync: str | None, now: datetime,
) -> tuple[int, int]:  # fmt: skip
    """Apply the staged rows in one transaction; return (files changed, new files count)."""
    staged = RemoteItemChange.__table__
    mirror = RemoteItem.__table__
    scope = RemoteItem.integration_id == integration_id
    # Which items did this enumeration touch (for a scratch enumeration: all of them)?
    touched = set(
        db.session.execute(
            db.select(RemoteItemChange.item_id).where(
                RemoteItemChange.integration_id == integration_id
            )
        ).scalars()
    )
    present = set(
        db.session.execute(
            db.select(RemoteItemChange.item_id).where(
                RemoteItemChange.integration_id == integration_id,
                RemoteItemChange.deleted.is_(False),
            )
        ).scalars()
    )
    if full:
        # A complete enumeration lists every item of the folder: what the mirror holds and
        # it did not list is gone from the folder. Nothing is deleted anywhere but the mirror.
        gone = (
            set(db.session.execute(db.select(RemoteItem.item_id).where(scope)).scalars()) - present
        )
        touched |= gone
        if gone:
            db.session.execute(
                delete(RemoteItem).where(scope, RemoteItem.item_id.in_(gone))
                .execution_options(synchronize_session=False)
            )  # fmt: skip
    db.session.execute(
        delete(RemoteItem)
        .where(
            scope,
            RemoteItem.item_id.in_(
                db.select(staged.c.item_id).where(
                    staged.c.integration_id == integration_id, staged.c.deleted.is_(True)
                )
            ),
        )
        .execution_options(synchronize_session=False)
    )
    cols = ["user_id", "integration_id", "item_id", *_MIRROR_COLUMNS]
    source = db.select(*[staged.c[c] for c in cols]).where(
        staged.c.integration_id == integration_id, staged.c.deleted.is_(False)
    )
    ins = _insert(mirror).from_select(cols, source)
    db.session.execute(
        ins.on_conflict_do_update(
            index_elements=["integration_id", "item_id"],
            set_={c: getattr(ins.excluded, c) for c in _MIRROR_COLUMNS},
        )
    )
    # An item whose parent chain no longer reaches the folder left it (a subfolder moved out
    # takes its children along even when the feed lists only the subfolder).
    parents = dict(
        db.session.execute(db.select(RemoteItem.item_id, RemoteItem.parent_id).where(scope)).all()
    )
    stray = [i for i in parents if not _reaches(i, folder_id, parents)]
    if stray:
        touched |= set(stray)
        db.session.execute(
            delete(RemoteItem).where(scope, RemoteItem.item_id.in_(stray))
            .execution_options(synchronize_session=False)
        )  # fmt: skip
    _discard_staged(integration_id)
    changed_files = _transitions(user_id, integration_id, folder_id, policy, touched, full, resync)
    new_count = _count_new(user_id, integration_id, folder_id)
    db.session.execute(
        update(Integration)
        .where(Integration.id == integration_id, Integration.user_id == user_id)
        .values(
            delta_link=delta_link,
            delta_checked_at=now,
            delta_due_at=now + timedelta(seconds=next_interval(user_id, now)),
            delta_error=None,
            delta_failures=0,
            remote_new_count=new_count,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return changed_files, new_count


def _reaches(item_id: str, folder_id: str, parents: dict[str, str | None]) -> bool:
    seen: set[str] = set()
    cur: str | None = item_id
    while cur is not None and cur not in seen:
        if cur == folder_id:
            return True
        seen.add(cur)
        cur = parents.get(cur)
    return False


def _count_new(user_id: int, integration_id: int, folder_id: str) -> int:
    tracked = db.select(File.onedrive_id).where(
        File.owner_id == user_id, File.onedrive_id.is_not(None)
    )
    return int(
        db.session.execute(
            db.select(func.count())
            .select_from(RemoteItem)
            .where(
                RemoteItem.integration_id == integration_id,
                RemoteItem.user_id == user_id,
                RemoteItem.is_folder.is_(False),
                RemoteItem.item_id != folder_id,
                RemoteItem.item_id.not_in(tracked),
            )
        ).scalar_one()
    )


def _folder_paths(integration_id: int, folder_id: str, folder_path: str) -> dict[str, str]:
    """Return each folder of the mirror's path as ``onedrive_path`` reads it (``/a/b``)."""
    rows = dict(
        (item_id, (parent, name))
        for item_id, parent, name in db.session.execute(
            db.select(RemoteItem.item_id, RemoteItem.parent_id, RemoteItem.name).where(
                RemoteItem.integration_id == integration_id, RemoteItem.is_folder.is_(True)
            )
        ).all()
    )
    paths = {folder_id: "/" + folder_path.strip("/")}

    def path_of(fid: str, depth: int = 0) -> str | None:
        if fid in paths:
            return paths[fid]
        if fid not in rows or depth > 64:
            return None
        parent, name = rows[fid]
        base = path_of(parent, depth + 1) if parent else None
        if base is None:
            return None
        paths[fid] = f"{base}/{name}"
        return paths[fid]

    for fid in rows:
        path_of(fid)
    return paths


def _transitions(
    user_id: int, integration_id: int, folder_id: str, policy: str, touched: set[str],
    full: bool, resync: str | None,
) -> int:  # fmt: skip
    """Decide and apply each tracked library file's transition; return how many changed."""
    folder_path = db.session.execute(
        db.select(Integration.folder_path).where(Integration.id == integration_id)
    ).scalar_one()
    query = db.select(File).where(File.owner_id == user_id, File.onedrive_id.is_not(None))
    if not full:
        if not touched:
            return 0
        query = query.where(File.onedrive_id.in_(touched))
    files = db.session.execute(query).scalars().all()
    if not files:
        return 0
    items = {
        r.item_id: r
        for r in db.session.execute(
            db.select(RemoteItem).where(
                RemoteItem.integration_id == integration_id,
                RemoteItem.item_id.in_([f.onedrive_id for f in files]),
            )
        ).scalars()
    }
    paths = _folder_paths(integration_id, folder_id, folder_path)
    done = 0
    for f in files:
        item = items.get(str(f.onedrive_id))
        known_parent = None
        if f.onedrive_path:
            known_parent = next(
                (fid for fid, p in paths.items() if p == f.onedrive_path.rsplit("/", 1)[0]), None
            )
        change = classify(
            deleted=item is None,
            remote_ctag=item.ctag if item else None,
            remote_hash=item.quick_xor_hash if item else None,
            remote_etag=item.etag if item else None,
            parent_id=item.parent_id if item else None,
            name=item.name if item else None,
            synced_ctag=f.onedrive_ctag,
            synced_etag=f.onedrive_etag,
            library_hash=f.quick_xor_hash,
            known_parent=known_parent
            if known_parent is not None
            else (item.parent_id if item else None),
            known_name=f.onedrive_name,
        )
        library_changed = (
            f.synced_content_hash is not None and f.content_hash != f.synced_content_hash
        )
        if (
            resync == RESYNC_UPLOAD
            and change in (DELETED, EDITED)
            and f.onedrive_sync_status != "syncing"
        ):
            # resyncChangesUploadDifferences: "upload any local items that the service did not
            # return, and upload files that differ from the server's version (keeping both
            # copies if you're not sure which one is more up-to-date)". Our side wins for a
            # missing item (upload again); a differing one becomes a conflict, whose choices
            # keep both copies unless the user picks one.
            decision = (
                Decision("not_synced", clear_ids=True, mark_due=True, event="remote_deleted")
                if change == DELETED
                else decide(
                    EDITED,
                    f.onedrive_sync_status,
                    tracked=True,
                    library_changed=True,
                    policy=policy,
                )
            )
        else:
            decision = decide(
                change, f.onedrive_sync_status, tracked=True,
                library_changed=library_changed, policy=policy,
            )  # fmt: skip
        if _apply_decision(user_id, f, item, decision, paths):
            done += 1
    return done


def _apply_decision(
    user_id: int, f: File, item: RemoteItem | None, decision: Decision, paths: dict[str, str]
) -> bool:
    if decision == NOTHING:
        return False
    values: dict[str, Any] = {}
    old_path = f.onedrive_path
    if decision.follow and item is not None:
        base = paths.get(item.parent_id or "")
        values["onedrive_name"] = item.name
        if base is not None:
            values["onedrive_path"] = f"{base}/{item.name}"
        if decision.status in (None, "synced"):
            # The item is still the content we synced: its tags are the new base, so the
            # transfer's reconcile does not mistake a rename for an edit.
            values["onedrive_etag"] = item.etag
            values["onedrive_ctag"] = item.ctag
    if decision.status is not None:
        values["onedrive_sync_status"] = decision.status
        if decision.status == "conflict":
            values["onedrive_error"] = BOTH_CHANGED_MESSAGE
        elif decision.status in ("remote_changed", "remote_deleted", "local_only", "synced"):
            values["onedrive_error"] = None
    if decision.clear_ids:
        values.update(
            onedrive_id=None, onedrive_etag=None, onedrive_ctag=None, onedrive_path=None,
            onedrive_web_url=None, onedrive_name=None, synced_content_hash=None,
            onedrive_synced_at=None, upload_url=None, upload_expires_at=None, bytes_sent=0,
        )  # fmt: skip
    values = {k: v for k, v in values.items() if getattr(f, k) != v}
    if not values:
        return False
    # Conditional on what we read: a transfer that claimed the file meanwhile wins (its
    # reconcile reads the item again), and this check changes nothing for it.
    moved = changed(
        update(File)
        .where(
            File.id == f.id,
            File.owner_id == user_id,
            File.onedrive_sync_status == f.onedrive_sync_status,
            File.onedrive_id == f.onedrive_id,
            File.content_hash == f.content_hash,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not moved:
        return False
    item_id = item.item_id if item else f.onedrive_id
    if decision.event == "remote_moved" and "onedrive_path" in values:
        events.file_remote_moved.send(
            None, user_id=user_id, file_id=f.id, item_id=item_id,
            old_path=old_path, new_path=values["onedrive_path"],
        )  # fmt: skip
    elif decision.event == "remote_changed":
        events.file_remote_changed.send(None, user_id=user_id, file_id=f.id, item_id=item_id)
    elif decision.event == "remote_deleted":
        events.file_remote_deleted.send(
            None, user_id=user_id, file_id=f.id, item_id=item_id,
            outcome=decision.status,
        )  # fmt: skip
    elif decision.event == "conflict":
        events.file_conflict.send(None, user_id=user_id, file_id=f.id, reason=BOTH_CHANGED_MESSAGE)
    if decision.mark_due:
        autosync.mark_due(user_id)
    return True
