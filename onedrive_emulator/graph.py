"""Graph v1.0 drive API under ``/v1.0/``, for ``/me/drive/...`` and ``/drives/{drive-id}/...``.

Addressing (https://learn.microsoft.com/onedrive/developer/rest-api/concepts/addressing-driveitems):
``root``, ``items/{id}``, ``special/approot``, each optionally followed by ``:/relative/path:``,
then ``/children``, ``/content``, ``/createUploadSession`` or ``/delta``. SDKs URL-encode
``root:/a.txt:`` as one path segment; the WSGI path arrives decoded, so both forms work.

Defaults when ``@microsoft.graph.conflictBehavior`` is absent: ``replace`` for ``PUT
.../content`` (driveitem-put-content), ``fail`` for ``createUploadSession`` (its request body
documents "fail (default)") and for folder creation. Clients should always send it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, request

from drivesync.graph.quickxor import QuickXorHash

from . import delta as delta_api
from .bodies import Incomplete, copy_body
from .identity import get_state
from .items import (
    GraphProblem,
    Resolved,
    check_if_match,
    check_new_path,
    check_quota,
    commit_file,
    conflict_behavior,
    download_url,
    drive_json,
    ensure_folders,
    item_json,
    not_found,
    resolve,
    unique_name,
    user_json,
)
from .responses import graph_error, graph_json
from .state import (
    UPLOAD_SESSION_LIFETIME,
    AccessToken,
    Account,
    Drive,
    EmulatorState,
    Item,
    UploadSession,
    new_secret,
    utcnow,
)
from .subscriptions import handle as handle_subscriptions
from .uploads import session_status

bp = Blueprint("emulator_graph", __name__)

SIMPLE_UPLOAD_LIMIT = 250 * 1024 * 1024  # "files up to 250 MB" (driveitem-put-content)
DEFAULT_PAGE = 200
MAX_PAGE = 999
_DRIVE = re.compile(r"^(?:me/drive|drives/([^/:]+))(.*)$")
_DELTA = re.compile(r"^/delta(?:\(\)|\(token='([^']*)'\))?$")


@dataclass
class Target:
    """The parsed request path."""

    drive: Drive
    base: Item
    segments: list[str]
    action: str


def _authenticate(state: EmulatorState) -> AccessToken | Response:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    challenge = {
        "WWW-Authenticate": 'Bearer realm="", authorization_uri='
        f'"{request.url_root}common/oauth2/authorize", client_id="00000003-0000-0000-'
        'c000-000000000000"'
    }
    if scheme.lower() != "bearer" or not value:
        return graph_error(
            401, "InvalidAuthenticationToken", "Access token is empty.", headers=challenge
        )
    with state.lock:
        token = state.access_tokens.get(value.strip())
    if token is None:
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "IDX14100: JWT is not well formed.",
            headers=challenge,
        )
    if token.revoked:
        return graph_error(
            401, "InvalidAuthenticationToken", "Access token has been revoked.", headers=challenge
        )
    if token.expires_at <= utcnow():
        return graph_error(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
            headers=challenge,
        )
    return token


@bp.route("/v1.0/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def graph(rest: str) -> Response:
    """Authenticate the bearer token and dispatch a Graph request."""
    state = get_state()
    token = _authenticate(state)
    if isinstance(token, Response):
        return token
    account = state.account(token.email)
    if account is None:
        return graph_error(401, "InvalidAuthenticationToken", "Unknown user.")
    g.token = token
    try:
        return _dispatch(state, token, account, rest.rstrip("/"))
    except GraphProblem as p:
        return graph_error(p.status, p.code, p.message, p.inner)


def _dispatch(state: EmulatorState, token: AccessToken, account: Account, rest: str) -> Response:
    method = request.method
    if rest == "me":
        _only(method, "GET")
        return graph_json(user_json(account))
    if rest == "me/drives":
        _only(method, "GET")
        return graph_json({"value": [drive_json(state, account, request.url_root)]})
    if rest == "subscriptions" or rest.startswith("subscriptions/"):
        return handle_subscriptions(state, token, account, rest)
    match = _DRIVE.match(rest)
    if not match:
        raise GraphProblem(
            400, "invalidRequest", f"Resource not found for the segment '{rest.split('/')[0]}'."
        )
    drive_id, remainder = match.groups()
    own = state.drive_of(account)
    if drive_id is not None and drive_id.casefold() != own.id.casefold():
        raise not_found("The drive was not found or you do not have access to it.")
    if remainder == "":
        _only(method, "GET")
        return graph_json(drive_json(state, account, request.url_root))
    target = _parse(state, own, token, remainder)
    with state.lock:
        return _handle(state, account, target)


def _only(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise GraphProblem(405, "invalidRequest", f"The HTTP method '{method}' is not allowed.")


def _parse(state: EmulatorState, drive: Drive, token: AccessToken, rem: str) -> Target:
    with state.lock:
        if rem == "/root" or rem.startswith(("/root:", "/root/")):
            base, rem = drive.items[drive.root_id], rem[5:]
        elif rem.startswith("/items/"):
            m = re.match(r"^/items/([^/:]+)(.*)$", rem)
            if not m:
                raise not_found()
            item_id, rem = m.groups()
            found = drive.items[drive.root_id] if item_id == "root" else drive.items.get(item_id)
            if found is None or found.deleted:
                raise not_found()
            base = found
        elif rem.startswith("/special/"):
            m = re.match(r"^/special/([^/:]+)(.*)$", rem)
            if not m or m.group(1).lower() != "approot":
                raise not_found("Only the approot special folder exists in the emulator.")
            client = state.clients.get(token.client_id)
            base = state.approot(drive, client.app_name if client else token.client_id)
            rem = m.group(2)
        else:
            raise GraphProblem(400, "invalidRequest", "Unsupported drive resource path.")
    segments: list[str] = []
    if rem.startswith(":"):
        body = rem[1:]
        end = body.find(":")
        path, rem = (body, "") if end == -1 else (body[:end], body[end + 1 :])
        path = path.strip("/")
        segments = path.split("/") if path else []
        if any(not s for s in segments):
            raise GraphProblem(400, "invalidRequest", "The path contains an empty segment.")
    return Target(drive, base, segments, rem)


def _handle(state: EmulatorState, account: Account, t: Target) -> Response:
    method, action = request.method, t.action
    where = resolve(state, t.drive, t.base, t.segments)
    if action == "":
        if method == "GET":
            return graph_json(item_json(state, t.drive, _existing(where), request.url_root))
        if method == "DELETE":
            return _delete(state, t.drive, _existing(where))
        if method == "PATCH":
            return _patch(state, t.drive, _existing(where))
        _only(method, "GET", "DELETE", "PATCH")
    if action == "/children":
        if method == "GET":
            return _list_children(state, t.drive, _existing(where))
        _only(method, "POST")
        return _create_folder(state, t.drive, _existing(where))
    if action == "/content":
        if method == "GET":
            item = _existing(where)
            if item.is_folder:
                raise not_found("A folder has no content to download.")
            url = download_url(state, t.drive, item, request.url_root)
            return Response(status=302, headers={"Location": url})
        _only(method, "PUT")
        return _simple_upload(state, account, where)
    if action == "/createUploadSession":
        _only(method, "POST")
        return _create_session(state, account, where, addressed_by_path=bool(t.segments))
    delta = _DELTA.match(action)
    if delta:
        _only(method, "GET")
        return delta_api.delta(state, t.drive, _existing(where), delta.group(1))
    raise GraphProblem(400, "invalidRequest", f"Unsupported segment '{action}'.")


def _existing(where: Resolved) -> Item:
    if where.item is None:
        raise not_found()
    return where.item


# ---- items ------------------------------------------------------------------------------------
def _delete(state: EmulatorState, drive: Drive, item: Item) -> Response:
    if item.parent_id is None:
        raise GraphProblem(403, "accessDenied", "The root folder cannot be deleted.")
    check_if_match(item, request.headers.get("If-Match"))
    state.delete_item(drive, item)
    return Response(status=204)


def _patch(state: EmulatorState, drive: Drive, item: Item) -> Response:
    body = _json_body()
    check_if_match(item, request.headers.get("If-Match"))
    parent = drive.items.get(item.parent_id) if item.parent_id else None
    if parent is None:
        raise GraphProblem(403, "accessDenied", "The root folder cannot be changed.")
    new_parent = parent
    ref = body.get("parentReference") or {}
    if isinstance(ref, dict) and ref.get("id"):
        found = drive.items.get(str(ref["id"]))
        if found is None or found.deleted or not found.is_folder:
            raise not_found("The new parent folder was not found.")
        new_parent = found
    name = str(body.get("name") or item.name)
    check_new_path(state, drive, new_parent, [name])
    clash = state.child_named(drive, new_parent.id, name)
    if clash is not None and clash.id != item.id:
        behavior = conflict_behavior(body.get("@microsoft.graph.conflictBehavior"), "fail")
        if behavior == "fail":
            raise GraphProblem(409, "nameAlreadyExists", "The specified item name already exists.")
        if behavior == "rename":
            name = unique_name(state, drive, new_parent, name)
        else:
            state.delete_item(drive, clash)
    item.name, item.parent_id = name, new_parent.id
    state.bump(item)
    return graph_json(item_json(state, drive, item, request.url_root))


def _page_params() -> tuple[int, int]:
    try:
        top = int(request.args.get("$top", DEFAULT_PAGE))
        skip = int(request.args.get("$skiptoken", "0") or 0)
    except ValueError:
        raise GraphProblem(
            400, "invalidRequest", "Invalid $top or $skiptoken.", "invalidQueryOption"
        ) from None
    if not 1 <= top <= MAX_PAGE or skip < 0:
        raise GraphProblem(
            400, "invalidRequest", "$top must be between 1 and 999.", "invalidQueryOption"
        )
    return top, skip


def _list_children(state: EmulatorState, drive: Drive, folder: Item) -> Response:
    if not folder.is_folder:
        raise not_found("The item is not a folder.")
    top, skip = _page_params()
    kids = state.children(drive, folder.id)
    page = kids[skip : skip + top]
    body: dict[str, Any] = {
        "value": [item_json(state, drive, k, request.url_root) for k in page],
    }
    if skip + top < len(kids):
        body["@odata.nextLink"] = f"{request.base_url}?$top={top}&$skiptoken={skip + top}"
    return graph_json(body)


def _json_body() -> dict[str, Any]:
    if not request.content_length and not request.data:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise GraphProblem(400, "invalidRequest", "The request body must be a JSON object.")
    return body


def _create_folder(state: EmulatorState, drive: Drive, parent: Item) -> Response:
    if not parent.is_folder:
        raise not_found("The parent is not a folder.")
    body = _json_body()
    name = body.get("name")
    if not isinstance(name, str):
        raise GraphProblem(400, "invalidRequest", "The 'name' property is required.")
    if "folder" not in body:
        raise GraphProblem(
            400, "invalidRequest", "Only folders can be created this way: include a 'folder' facet."
        )
    check_new_path(state, drive, parent, [name])
    behavior = conflict_behavior(body.get("@microsoft.graph.conflictBehavior"), "fail")
    existing = state.child_named(drive, parent.id, name)
    if existing is not None:
        if behavior == "fail":
            raise GraphProblem(409, "nameAlreadyExists", "The specified item name already exists.")
        if behavior == "rename":
            name = unique_name(state, drive, parent, name)
        elif existing.is_folder:
            return graph_json(item_json(state, drive, existing, request.url_root), 200)
        else:
            state.delete_item(drive, existing)
    folder = state.new_item(drive, name, parent.id, is_folder=True)
    return graph_json(item_json(state, drive, folder, request.url_root), 201)


def _upload_target(state: EmulatorState, where: Resolved) -> tuple[Item, str, Item | None]:
    """Return (parent, name, existing target or None), creating missing parent folders."""
    if where.item is not None:
        if where.item.is_folder and where.item.parent_id is None:
            raise GraphProblem(400, "invalidRequest", "Cannot upload content to the root.")
        return where.parent, where.item.name, where.item
    check_new_path(state, where.drive, where.parent, where.missing)
    parent = ensure_folders(state, where.drive, where.parent, where.missing[:-1])
    return parent, where.missing[-1], None


def _simple_upload(state: EmulatorState, account: Account, where: Resolved) -> Response:
    length = request.content_length
    if length is not None and length > SIMPLE_UPLOAD_LIMIT:
        raise GraphProblem(
            413,
            "invalidRequest",
            "Simple upload supports files up to 250 MB; use an upload session.",
            "maxFileSizeExceeded",
        )
    behavior = conflict_behavior(request.args.get("@microsoft.graph.conflictBehavior"), "replace")
    if where.item is not None and where.item.is_folder:
        raise GraphProblem(400, "invalidRequest", "Cannot upload content to a folder.")
    check_if_match(where.item, request.headers.get("If-Match"))
    if account.quota_exceeded:
        check_quota(account, 0, 0)
    if where.item is not None and behavior == "fail":
        raise GraphProblem(409, "nameAlreadyExists", "The specified item name already exists.")
    tmp = state.tmp_path()
    hasher = QuickXorHash()
    # _dispatch holds the (re-entrant) lock exactly once: drop it while the body streams.
    state.lock.release()
    try:
        with open(tmp, "wb") as fh:
            size = copy_body(fh, length, hasher, SIMPLE_UPLOAD_LIMIT)
    except (Incomplete, OverflowError) as exc:
        _remove(tmp)
        if isinstance(exc, OverflowError):
            raise GraphProblem(
                413,
                "invalidRequest",
                "Simple upload supports files up to 250 MB.",
                "maxFileSizeExceeded",
            ) from None
        raise GraphProblem(400, "invalidRequest", "The request body was incomplete.") from None
    finally:
        state.lock.acquire()
    try:
        names = [where.item.name] if where.item else where.missing
        where = resolve(state, where.drive, where.parent, names)
        parent, name, target = _upload_target(state, where)
        target_by_id = target if behavior == "replace" else None
        item, created = commit_file(
            state,
            account,
            where.drive,
            parent,
            name,
            behavior,
            tmp,
            size,
            hasher.b64digest(),
            target=target_by_id,
        )
    except GraphProblem:
        _remove(tmp)
        raise
    return graph_json(
        item_json(state, where.drive, item, request.url_root), 201 if created else 200
    )


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _create_session(
    state: EmulatorState, account: Account, where: Resolved, *, addressed_by_path: bool
) -> Response:
    body = _json_body()
    props = body.get("item") or {}
    if not isinstance(props, dict):
        raise GraphProblem(400, "invalidRequest", "'item' must be an object.")
    behavior = conflict_behavior(props.get("@microsoft.graph.conflictBehavior"), "fail")
    if account.quota_exceeded:
        check_quota(account, 0, 0)
    file_size = props.get("fileSize")
    if isinstance(file_size, int):
        check_quota(account, state.used_bytes(where.drive), file_size)
    check_if_match(where.item, request.headers.get("If-Match"))
    if where.item is not None and where.item.is_folder:
        raise GraphProblem(
            400,
            "invalidRequest",
            "Address the parent folder with ':/{filename}:' to upload into it.",
        )
    parent, name, existing = _upload_target(state, where)
    if props.get("name") not in (None, name):
        raise GraphProblem(
            400, "invalidRequest", "The item name in the body must match the name in the path."
        )
    target = existing if existing is not None and not addressed_by_path else None
    if existing is not None and addressed_by_path and behavior == "fail":
        raise GraphProblem(409, "nameAlreadyExists", "The specified item name already exists.")
    fsi = props.get("fileSystemInfo") or {}
    token = g.token
    session = UploadSession(
        id=new_secret(32),
        drive_id=where.drive.id,
        email=account.email,
        client_id=token.client_id,
        parent_id=parent.id,
        name=name,
        conflict="replace" if target is not None else behavior,
        target_item_id=target.id if target is not None else None,
        part_path=_session_file(state),
        expires_at=utcnow() + UPLOAD_SESSION_LIFETIME,
        total=file_size if isinstance(file_size, int) and file_size > 0 else None,
        fs_created=_parse_time(fsi.get("createdDateTime")),
        fs_modified=_parse_time(fsi.get("lastModifiedDateTime")),
        defer_commit=bool(body.get("deferCommit")),
    )
    state.sessions[session.id] = session
    status = session_status(state, session)
    return graph_json({"uploadUrl": f"{request.url_root}_upload/{session.id}", **status})


def _session_file(state: EmulatorState) -> str:
    path = os.path.join(state.data_dir, "sessions", new_secret(12))
    open(path, "wb").close()
    return path


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise GraphProblem(400, "invalidRequest", f"Invalid date '{value}'.") from None
