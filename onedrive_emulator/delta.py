"""``driveItem: delta`` for a folder and its descendants, with Microsoft's documented rules.

Sources (cited where the behaviour is subtle):

- https://learn.microsoft.com/graph/api/driveitem-delta (and its OneDrive twin
  https://learn.microsoft.com/onedrive/developer/rest-api/api/driveitem_delta):
  no token enumerates the hierarchy's current state; ``token=latest`` answers an empty page with
  the latest deltaLink; a previous token answers the new state since it. Pages carry
  ``@odata.nextLink`` until the last, which carries ``@odata.deltaLink``. "The delta feed shows the
  latest state for each item, not each change"; "the same item may appear more than once"
  (here: an item changed while a client pages can come again in the next window).
  ``parentReference`` carries no ``path`` ("renaming a folder doesn't result in any descendants of
  the folder being returned"). Deleted items carry the ``deleted`` facet; delta omits ``cTag`` and
  ``name`` of deleted items on OneDrive for Business, ``cTag`` and ``size`` on personal OneDrive,
  and ``cTag`` of created or modified items on OneDrive for Business. The ``deltaExcludeParent``
  request header leaves out "the parent items in the hierarchy" of changed items, which are
  otherwise returned. A token the service cannot serve answers ``410 Gone`` with a ``Location``
  header holding a URL that starts a fresh enumeration.
- https://learn.microsoft.com/onedrive/developer/rest-api/concepts/errors : ``resyncRequired``,
  "the delta token is no longer valid, and the app must reset the sync state". The 410 body
  carries ``resyncRequired`` as its code and the specific instruction
  (``resyncChangesApplyDifferences`` / ``resyncChangesUploadDifferences``) as ``innerError.code``.

Scope: an item belongs to a folder's delta when the folder is among its ancestors. Every item
keeps the parent it had at each sequence number (``Item.parents``), so an item (or a folder with
its descendants) moved *out* of the folder since the token is reported deleted to that scope, and
one moved *in* is reported as a new item; a deleted item never appears in a first enumeration.

Paging is O(page): the list of changes is computed once, when an enumeration starts (one pass over
the drive), and kept by id in ``state.delta_enumerations``; each nextLink names the enumeration
and an offset. An enumeration that fits in one page is not kept at all.
"""

from __future__ import annotations

import base64
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask import Response, request

from .items import GraphProblem, deleted_json, item_json
from .responses import graph_error, graph_json
from .state import Drive, EmulatorState, Item, new_secret

DEFAULT_TOP = 200
MAX_TOP = 999
KEPT_ENUMERATIONS = 16
_FN_SUFFIX = re.compile(r"\((?:token='[^']*')?\)$")


@dataclass
class Enumeration:
    """One window of changes: (item id, gone from the scope, parent id to report when gone)."""

    folder_id: str
    upto: int  # state.seq when computed: the deltaLink's token
    top: int
    entries: list[tuple[str, bool, str | None]]


class _Invalid(Exception):
    """A token this emulator cannot serve (malformed, from before a reset, or evicted)."""


# ---- tokens -----------------------------------------------------------------------------------
def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def delta_token(state: EmulatorState, seq: int) -> str:
    """Return the opaque token of a deltaLink: the changes after ``seq``."""
    return _encode(f"d1.{state.epoch}.{seq}")


def _page_token(state: EmulatorState, enum_id: str, offset: int) -> str:
    return _encode(f"p1.{state.epoch}.{enum_id}.{offset}")


def _decode(state: EmulatorState, raw: str) -> tuple[str, int, str]:
    """Return ("d", seq, "") or ("p", offset, enumeration id); raise _Invalid."""
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise _Invalid from None
    parts = text.split(".")
    if len(parts) < 3 or parts[1] != state.epoch:
        raise _Invalid
    try:
        if parts[0] == "d1" and len(parts) == 3:
            seq = int(parts[2])
            if not 0 <= seq <= state.seq:
                raise _Invalid
            return "d", seq, ""
        if parts[0] == "p1" and len(parts) == 4:
            return "p", int(parts[3]), parts[2]
    except ValueError:
        raise _Invalid from None
    raise _Invalid


# ---- scope and history ------------------------------------------------------------------------
def _parent_at(item: Item, seq: int) -> str | None:
    for at, parent_id in reversed(item.parents):
        if at <= seq:
            return parent_id
    return None


def _live_at(item: Item, seq: int) -> bool:
    created = item.parents[0][0] if item.parents else 0
    return created <= seq and (item.deleted_seq is None or item.deleted_seq > seq)


def _in_scope(drive: Drive, item: Item, folder_id: str, at: int | None) -> bool:
    """Whether ``folder_id`` is ``item`` or one of its ancestors (now, or at seq ``at``)."""
    cur: Item | None = item
    while cur is not None:
        if cur.id == folder_id:
            return True
        parent_id = cur.parent_id if at is None else _parent_at(cur, at)
        cur = drive.items.get(parent_id) if parent_id else None
    return False


def _candidates(drive: Drive, since: int) -> list[Item]:
    """Items that may differ for a scope since ``since``: changed ones and their descendants."""
    if since == 0:
        return [i for i in drive.items.values() if not i.deleted]
    changed = {i.id: i for i in drive.items.values() if i.seq > since}
    folders = [i.id for i in changed.values() if i.is_folder]
    if folders:
        # A folder moved in or out takes its unchanged descendants with it.
        kids: dict[str, list[Item]] = defaultdict(list)
        for i in drive.items.values():
            if i.parent_id:
                kids[i.parent_id].append(i)
        seen: set[str] = set()
        while folders:
            fid = folders.pop()
            if fid in seen:
                continue
            seen.add(fid)
            for kid in kids[fid]:
                changed.setdefault(kid.id, kid)
                if kid.is_folder:
                    folders.append(kid.id)
    return list(changed.values())


def compute(
    state: EmulatorState, drive: Drive, folder: Item, since: int, *, exclude_parent: bool, top: int
) -> Enumeration:
    """Return the window of changes below ``folder`` after ``since`` (0 = enumerate all)."""
    fid = folder.id
    picked: list[tuple[Item, bool, str | None]] = []
    for item in _candidates(drive, since):
        now = not item.deleted and _in_scope(drive, item, fid, None)
        if since == 0:
            if now:
                picked.append((item, False, None))
            continue
        was = _live_at(item, since) and _in_scope(drive, item, fid, since)
        if now and (not was or item.seq > since):
            picked.append((item, False, None))
        elif not now and was:
            # Deleted, or moved out of the folder: gone from this scope.
            picked.append((item, True, _parent_at(item, since)))
        elif item.deleted and item.seq > since and _in_scope(drive, item, fid, None):
            # Created and deleted inside the window: Graph may report such an id; clients must
            # ignore deletions of items they never saw.
            picked.append((item, True, item.parent_id))
    picked.sort(key=lambda p: p[0].seq)
    entries: list[tuple[str, bool, str | None]] = []
    emitted: set[str] = set()

    def parents_first(parent_id: str | None) -> None:
        # The parents in the hierarchy of a changed item (unless deltaExcludeParent), top down;
        # in a first enumeration this only orders parents before their children.
        if since != 0 and exclude_parent:
            return
        chain: list[str] = []
        cur = drive.items.get(parent_id) if parent_id else None
        while cur is not None and not cur.deleted:
            chain.append(cur.id)
            if cur.id == fid:
                break
            cur = drive.items.get(cur.parent_id) if cur.parent_id else None
        else:
            return  # not (or no longer) inside the scope
        for aid in reversed(chain):
            if aid not in emitted:
                emitted.add(aid)
                entries.append((aid, False, None))

    for item, gone, parent_id in picked:
        if gone:
            parents_first(parent_id)
            entries.append((item.id, True, parent_id))
            continue
        parents_first(item.parent_id if item.id != fid else None)
        if item.id not in emitted:
            emitted.add(item.id)
            entries.append((item.id, False, None))
    return Enumeration(fid, state.seq, top, entries)


# ---- rendering --------------------------------------------------------------------------------
def _live_json(state: EmulatorState, drive: Drive, item: Item) -> dict[str, Any]:
    body = item_json(state, drive, item, request.url_root, download=False)
    body["parentReference"].pop("path", None)  # "won't include a value for path"
    if drive.drive_type == "business":
        body.pop("cTag", None)  # OneDrive for Business: Create/Modify omit ctag
    return body


def _render(
    state: EmulatorState, drive: Drive, folder_id: str, entry: tuple[str, bool, str | None]
) -> dict[str, Any] | None:
    item_id, gone, parent_id = entry
    item = drive.items.get(item_id)
    if item is None:
        return None
    if gone:
        return deleted_json(drive, item, parent_id)
    if item.deleted or not _in_scope(drive, item, folder_id, None):
        # Changed again while the client paged: its latest state (the next window repeats it).
        return deleted_json(drive, item, item.parent_id)
    return _live_json(state, drive, item)


def _top() -> int | None:
    raw = request.args.get("$top")
    if raw is None:
        return None
    try:
        top = int(raw)
    except ValueError:
        top = 0
    if not 1 <= top <= MAX_TOP:
        raise GraphProblem(
            400, "invalidRequest", "$top must be between 1 and 999.", "invalidQueryOption"
        )
    return top


def _base_url() -> str:
    path = _FN_SUFFIX.sub("", request.path)
    return request.url_root.rstrip("/") + quote(path, safe="/:!$'=,;@+")


def _gone(state: EmulatorState, code: str, base: str) -> Response:
    inner = None if code == "resyncRequired" else code
    message = (
        "Resync required. The delta token is no longer valid; enumerate again from the Location"
        " URL and reconcile with your local state."
    )
    return graph_error(
        410,
        "resyncRequired",
        message,
        inner,
        headers={"Location": f"{base}?token={delta_token(state, 0)}"},
    )


def delta(state: EmulatorState, drive: Drive, folder: Item, fn_token: str | None) -> Response:
    """Answer ``GET …/delta`` for ``folder`` (the caller holds the state lock)."""
    if not folder.is_folder:
        raise GraphProblem(400, "invalidRequest", "delta is only available on folders.")
    raw = fn_token if fn_token is not None else request.args.get("token")
    base = _base_url()
    top = _top()
    if raw == "latest":
        return graph_json(
            {"value": [], "@odata.deltaLink": f"{base}?token={delta_token(state, state.seq)}"}
        )
    if raw:
        code = state.faults.take_delta_gone()
        if code is not None:
            return _gone(state, code, base)
        try:
            kind, number, enum_id = _decode(state, raw)
        except _Invalid:
            return _gone(state, "resyncRequired", base)
    else:
        kind, number, enum_id = "d", 0, ""
    cache: dict[str, Enumeration] = state.delta_enumerations  # type: ignore[assignment]
    if kind == "p":
        enumeration = cache.get(enum_id)
        if enumeration is None or enumeration.folder_id != folder.id:
            return _gone(state, "resyncRequired", base)
        offset = number
    else:
        exclude = request.headers.get("deltaExcludeParent") is not None
        enumeration = compute(
            state, drive, folder, number, exclude_parent=exclude, top=top or DEFAULT_TOP
        )
        offset = 0
        if len(enumeration.entries) > enumeration.top:
            enum_id = new_secret(9)
            cache[enum_id] = enumeration
            while len(cache) > KEPT_ENUMERATIONS:
                cache.pop(next(iter(cache)))
    size = top or enumeration.top
    page = enumeration.entries[offset : offset + size]
    values = [v for v in (_render(state, drive, folder.id, e) for e in page) if v is not None]
    body: dict[str, Any] = {"value": values}
    if offset + size < len(enumeration.entries):
        body["@odata.nextLink"] = f"{base}?token={_page_token(state, enum_id, offset + size)}"
    else:
        body["@odata.deltaLink"] = f"{base}?token={delta_token(state, enumeration.upto)}"
    return graph_json(body)
