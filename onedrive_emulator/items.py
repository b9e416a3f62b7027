"""driveItem logic shared by the Graph routes and the upload URLs: JSON shapes, path resolution,
conflict behaviour, committing content, and signed download URLs.

driveItem fields: https://learn.microsoft.com/graph/api/resources/driveitem
Conflict behaviour (``@microsoft.graph.conflictBehavior`` = fail | replace | rename):
https://learn.microsoft.com/graph/api/driveitem-put-content and
https://learn.microsoft.com/graph/api/driveitem-createuploadsession (409 ``nameAlreadyExists``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import mimetypes
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from .naming import name_problem, path_problem
from .state import Account, Drive, EmulatorState, Item, iso, utcnow

CONFLICT_BEHAVIORS = ("fail", "replace", "rename")
DOWNLOAD_URL_LIFETIME = 3600  # downloadUrl "is only valid for a short period of time"


class GraphProblem(Exception):
    """A Graph error to answer with (status, code, message, innerError code)."""

    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        """Record the error parts."""
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner


def not_found(message: str = "The resource could not be found.") -> GraphProblem:
    """Return the 404 ``itemNotFound`` problem."""
    return GraphProblem(404, "itemNotFound", message)


# ---- JSON -------------------------------------------------------------------------------------
def _identity(account: Account) -> dict[str, Any]:
    return {
        "user": {"displayName": account.display_name, "id": account.user_id, "email": account.email}
    }


def etag(item: Item) -> str:
    """Return the item's eTag (changes on any change)."""
    return f'"{{{item.guid}}},{item.version}"'


def ctag(item: Item) -> str:
    """Return the item's cTag (changes when the content changes)."""
    return f'"c:{{{item.guid}}},{item.content_version}"'


def parent_reference(state: EmulatorState, drive: Drive, item: Item) -> dict[str, Any]:
    """Return the ``parentReference`` facet."""
    ref: dict[str, Any] = {"driveId": drive.id, "driveType": drive.drive_type}
    if item.parent_id is not None:
        parent = drive.items[item.parent_id]
        ref["id"] = parent.id
        ref["name"] = parent.name
        ref["path"] = "/drive/root:" + quote(state.item_path(drive, parent), safe="/")
    return ref


def item_json(
    state: EmulatorState, drive: Drive, item: Item, base_url: str, *, download: bool = True
) -> dict[str, Any]:
    """Return the driveItem resource for ``item``."""
    owner = state.account(drive.owner_email)
    assert owner is not None  # noqa: S101 - every drive has an owner
    path = state.item_path(drive, item)
    body: dict[str, Any] = {
        "id": item.id,
        "name": item.name,
        "eTag": etag(item),
        "cTag": ctag(item),
        "size": item.size if not item.is_folder else _folder_size(state, drive, item),
        "createdDateTime": iso(item.created),
        "lastModifiedDateTime": iso(item.modified),
        "webUrl": f"{base_url}_web/{drive.id}{quote(path, safe='/')}",
        "createdBy": _identity(owner),
        "lastModifiedBy": _identity(owner),
        "parentReference": parent_reference(state, drive, item),
        "fileSystemInfo": {
            "createdDateTime": iso(item.fs_created),
            "lastModifiedDateTime": iso(item.fs_modified),
        },
    }
    if item.is_folder:
        body["folder"] = {"childCount": len(state.children(drive, item.id))}
        if item.parent_id is None:
            body["root"] = {}
        if item.special:
            body["specialFolder"] = {"name": item.special}
    else:
        body["file"] = {"mimeType": item.mime_type, "hashes": {"quickXorHash": item.quick_xor}}
        if download:
            body["@microsoft.graph.downloadUrl"] = download_url(state, drive, item, base_url)
    return body


def deleted_json(drive: Drive, item: Item, parent_id: str | None = None) -> dict[str, Any]:
    """Return the delta representation of a deleted item (or one moved out of the scope).

    https://learn.microsoft.com/graph/api/driveitem-delta (Remarks): delta omits ``cTag`` and
    ``name`` of a deleted item on OneDrive for Business, ``cTag`` and ``size`` on personal
    OneDrive. The example keeps the ``folder``/``file`` facet next to ``deleted``.
    """
    ref: dict[str, Any] = {"driveId": drive.id, "driveType": drive.drive_type}
    parent = parent_id if parent_id is not None else item.parent_id
    if parent:
        ref["id"] = parent
    body: dict[str, Any] = {"id": item.id}
    if drive.drive_type != "business":
        body["name"] = item.name
    body["deleted"] = {"state": "deleted"}
    body["folder" if item.is_folder else "file"] = {}
    body["parentReference"] = ref
    body["fileSystemInfo"] = {"lastModifiedDateTime": iso(item.modified)}
    return body


def _folder_size(state: EmulatorState, drive: Drive, folder: Item) -> int:
    total, stack = 0, [folder]
    while stack:
        for child in state.children(drive, stack.pop().id):
            if child.is_folder:
                stack.append(child)
            else:
                total += child.size
    return total


def drive_json(state: EmulatorState, account: Account, base_url: str) -> dict[str, Any]:
    """Return the drive resource with its quota."""
    drive = state.drive_of(account)
    used = state.used_bytes(drive)
    total = account.quota_total
    remaining = max(0, total - used)
    ratio = used / total if total else 1.0
    quota_state = (
        "exceeded"
        if account.quota_exceeded or ratio >= 1
        else "critical"
        if ratio >= 0.99
        else "nearing"
        if ratio >= 0.9
        else "normal"
    )
    root = drive.items[drive.root_id]
    return {
        "id": drive.id,
        "driveType": drive.drive_type,
        "name": "OneDrive",
        "createdDateTime": iso(root.created),
        "lastModifiedDateTime": iso(root.modified),
        "webUrl": f"{base_url}_web/{drive.id}",
        "owner": _identity(account),
        "quota": {
            "deleted": 0,
            "remaining": remaining,
            "state": quota_state,
            "total": total,
            "used": used,
        },
    }


def user_json(account: Account) -> dict[str, Any]:
    """Return the /me user resource."""
    first, _, last = account.display_name.partition(" ")
    return {
        "id": account.user_id,
        "displayName": account.display_name,
        "givenName": first,
        "surname": last or None,
        "mail": account.email,
        "userPrincipalName": account.email,
        "businessPhones": [],
        "jobTitle": None,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": "en-US",
    }


# ---- download URLs ----------------------------------------------------------------------------
def _sign(state: EmulatorState, payload: bytes) -> str:
    mac = hmac.new(state.download_key, payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def download_url(state: EmulatorState, drive: Drive, item: Item, base_url: str) -> str:
    """Return a pre-authenticated, short-lived URL serving the item's bytes."""
    payload = json.dumps(
        {"d": drive.id, "i": item.id, "e": int(time.time()) + DOWNLOAD_URL_LIFETIME}
    ).encode()
    token = base64.urlsafe_b64encode(payload).decode().rstrip("=")
    return f"{base_url}_download/{token}.{_sign(state, payload)}"


def check_download_token(state: EmulatorState, token: str) -> tuple[str, str] | None:
    """Return (drive id, item id) if ``token`` is genuine and unexpired."""
    body, _, sig = token.partition(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(payload)
    except (ValueError, json.JSONDecodeError):
        return None
    if not hmac.compare_digest(sig, _sign(state, payload)) or data["e"] < time.time():
        return None
    return data["d"], data["i"]


# ---- paths and names --------------------------------------------------------------------------
@dataclass
class Resolved:
    """Where a request points: an existing item, or a parent plus missing names."""

    drive: Drive
    item: Item | None
    parent: Item
    missing: list[str]

    @property
    def name(self) -> str:
        """Return the name of the (possibly missing) target."""
        return self.missing[-1] if self.missing else (self.item.name if self.item else "")


def resolve(state: EmulatorState, drive: Drive, base: Item, segments: list[str]) -> Resolved:
    """Walk ``segments`` below ``base``; stop at the first missing one."""
    cur = base
    for i, segment in enumerate(segments):
        if not cur.is_folder:
            raise not_found()
        child = state.child_named(drive, cur.id, segment)
        if child is None:
            return Resolved(drive, None, cur, segments[i:])
        cur = child
    parent = drive.items.get(cur.parent_id) if cur.parent_id else cur
    return Resolved(drive, cur, parent or cur, [])


def check_name(name: str) -> None:
    """Raise a 400 if ``name`` breaks OneDrive's naming rules."""
    problem = name_problem(name)
    if problem:
        raise GraphProblem(400, "invalidRequest", problem, "invalidPath")


def check_new_path(state: EmulatorState, drive: Drive, parent: Item, names: list[str]) -> None:
    """Validate every new name and the resulting full path length."""
    for name in names:
        check_name(name)
    full = state.item_path(drive, parent) + "".join("/" + n for n in names)
    problem = path_problem(full)
    if problem:
        raise GraphProblem(400, "invalidRequest", problem, "pathIsTooLong")


def ensure_folders(state: EmulatorState, drive: Drive, parent: Item, names: list[str]) -> Item:
    """Create the missing intermediate folders ``names`` below ``parent``; return the last."""
    cur = parent
    for name in names:
        existing = state.child_named(drive, cur.id, name)
        if existing is not None and not existing.is_folder:
            raise GraphProblem(409, "nameAlreadyExists", f"'{name}' exists and is not a folder.")
        cur = existing or state.new_item(drive, name, cur.id, is_folder=True)
    return cur


def unique_name(state: EmulatorState, drive: Drive, parent: Item, name: str) -> str:
    """Return the name OneDrive's ``rename`` picks: ``report 1.txt``, ``report 2.txt``..."""
    stem, ext = os.path.splitext(name)
    if not stem:
        stem, ext = name, ""
    n = 1
    while state.child_named(drive, parent.id, f"{stem} {n}{ext}") is not None:
        n += 1
    return f"{stem} {n}{ext}"


def conflict_behavior(value: Any, default: str) -> str:
    """Validate a ``@microsoft.graph.conflictBehavior`` value."""
    if value is None or value == "":
        return default
    if value not in CONFLICT_BEHAVIORS:
        raise GraphProblem(
            400, "invalidRequest", f"Invalid value '{value}' for @microsoft.graph.conflictBehavior."
        )
    return str(value)


def check_if_match(item: Item | None, header: str | None) -> None:
    """Honour ``If-Match``: 412 when it names neither the current eTag nor cTag."""
    if not header or header.strip() == "*":
        return
    if item is None or header.strip() not in (etag(item), ctag(item)):
        raise GraphProblem(
            412,
            "resourceModified",
            "The resource has changed since the caller last read it.",
            "entityTagDoesNotMatch",
        )


# ---- committing content -----------------------------------------------------------------------
def check_quota(account: Account, drive_used: int, growth: int) -> None:
    """Raise 507 when the upload does not fit (or the quota fault is on)."""
    if account.quota_exceeded or drive_used + growth > account.quota_total:
        raise GraphProblem(
            507,
            "quotaLimitReached",
            "Insufficient Space Available: the user has reached their quota.",
            "insufficientStorage",
        )


def commit_file(
    state: EmulatorState,
    account: Account,
    drive: Drive,
    parent: Item,
    name: str,
    conflict: str,
    tmp_path: str,
    size: int,
    quick_xor: str,
    *,
    target: Item | None = None,
    fs_times: tuple[datetime | None, datetime | None] = (None, None),
) -> tuple[Item, bool]:
    """Turn the bytes at ``tmp_path`` into a file; return (item, created).

    ``target`` (an item addressed by id) is always replaced. Otherwise the name is looked up
    under ``parent`` and ``conflict`` decides: fail -> 409, replace -> new content for the
    existing file, rename -> a free name.
    """
    with state.lock:
        existing: Item | None
        if target is not None:
            if target.deleted or target.is_folder:
                raise not_found()
            existing, final = target, target.name
        else:
            existing = state.child_named(drive, parent.id, name)
            final = name
            if existing is not None:
                if conflict == "fail":
                    raise GraphProblem(
                        409, "nameAlreadyExists", "The specified item name already exists."
                    )
                if conflict == "rename":
                    existing, final = None, unique_name(state, drive, parent, name)
        old_size = existing.size if existing is not None and not existing.is_folder else 0
        check_quota(account, state.used_bytes(drive), size - old_size)
        blob = state.blob_path()
        os.replace(tmp_path, blob)
        created = existing is None or existing.is_folder
        if existing is not None and existing.is_folder:
            state.delete_item(drive, existing)
        if created:
            item = state.new_item(
                drive,
                final,
                parent.id,
                is_folder=False,
                fs_created=fs_times[0],
                fs_modified=fs_times[1],
            )
            item.mime_type = mimetypes.guess_type(final)[0] or "application/octet-stream"
        else:
            assert existing is not None  # noqa: S101 - narrowed above
            item = existing
            item.fs_modified = fs_times[1] or utcnow()
        state.set_content(item, blob, size, quick_xor)
        if created:
            item.version = item.content_version = 1
        return item, created
