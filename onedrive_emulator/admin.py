"""The emulator's JSON admin API under ``/_emulator/`` (development and tests only; no auth).

Routes (JSON bodies; every answer is JSON):

==========================================================  ======================================
``GET    /_emulator/health``                                 ``{"ok": true}``
``POST   /_emulator/clients``                                register an app: ``client_id``,
                                                             ``client_secret`` (null = public),
                                                             ``redirect_uris``, ``app_name``
``GET    /_emulator/clients``                                registered apps (no secrets)
``POST   /_emulator/accounts``                               ``email``, ``display_name``,
                                                             ``drive_type`` personal|business,
                                                             ``quota_total`` -> account
``GET    /_emulator/accounts``                               all accounts
``POST   /_emulator/token``                                  ``email``, ``client_id``, ``scopes``
                                                             -> identity-platform token response
``POST   /_emulator/faults/throttle``                        ``every`` (Nth request), ``count``
                                                             (next K), ``retry_after`` seconds
``POST   /_emulator/faults/fail``                            ``status`` 500|502|503|504,
                                                             ``count``, ``retry_after`` (503
                                                             only; null = no header)
``POST   /_emulator/faults/expire-access-tokens``            ``after_seconds``
``POST   /_emulator/faults/expire-upload-sessions``          all open sessions now 404
``POST   /_emulator/faults/drop-connection``                 ``count``, ``target`` fragment|graph:
                                                             cut mid-body (no close_notify)
``POST   /_emulator/faults/lose-response``                   ``count``, ``target``: request done
                                                             (fragment stored), answer lost
``POST   /_emulator/faults/reset-connection``                ``count``, ``target``: RST mid-body
                                                             (SO_LINGER 0)
``DELETE /_emulator/faults``                                 clear all faults (not the latency)
``GET    /_emulator/latency``                                ``{"ms": N}``
``PUT    /_emulator/latency``                                ``ms``: added to every non-admin
                                                             request (reset restores the
                                                             ``--latency-ms`` start value)
``POST   /_emulator/accounts/<email>/revoke-consent``        refresh -> invalid_grant, bearer 401
``POST   /_emulator/accounts/<email>/quota-exceeded``        ``on``: uploads answer 507
``PUT    /_emulator/accounts/<email>/items/<path>``          raw body = new content (server-side
                                                             change: new eTag, cTag, hash)
``DELETE /_emulator/accounts/<email>/items/<path>``          delete (and its descendants), as
                                                             from another device
``POST   /_emulator/accounts/<email>/rename``                ``path``, ``new_name``: new eTag,
                                                             same cTag -> listing entry
``POST   /_emulator/accounts/<email>/move``                  ``path``, ``new_parent_path`` ("/"
                                                             = root; must exist): new eTag, same
                                                             cTag -> listing entry
``POST   /_emulator/faults/delta-gone``                      ``code`` resyncChangesApply|Upload-
                                                             Differences|resyncRequired,
                                                             ``count``: the next delta requests
                                                             with a token answer 410 + Location
``GET    /_emulator/accounts/<email>/items``                 path, id, size, quickXorHash, eTag,
                                                             cTag, folder
``GET    /_emulator/requests``                               request log: method, path, query,
                                                             status (0 = cut), dropped, cut
                                                             (drop|lose|reset), content_length,
                                                             content_range, next_expected,
                                                             had_authorization_header
``DELETE /_emulator/requests``                               clear the request log
``POST   /_emulator/reset``                                  wipe drives, tokens, faults, log;
                                                             keep registered clients
``GET    /_emulator/subscriptions``                          change-notification subscriptions
                                                             (subscriptions.py), clientState and
                                                             owner included
``POST   /_emulator/subscriptions/<id>/lifecycle``           ``event``: reauthorizationRequired|
                                                             subscriptionRemoved|missed, sent to
                                                             the lifecycle URL
``POST   /_emulator/subscriptions/<id>/expire``              expire it now (404 from then on)
``DELETE /_emulator/subscriptions/<id>``                     remove it silently
``GET    /_emulator/notifications``                          delivery log: url, attempt, status
``DELETE /_emulator/notifications``                          clear the delivery log
``PUT    /_emulator/notifications/retry-base``               ``seconds``: first retry delay
==========================================================  ======================================
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from drivesync.graph.quickxor import QuickXorHash

from .bodies import copy_body
from .faults import FAIL_STATUSES
from .identity import get_state, token_body
from .items import (
    GraphProblem,
    check_new_path,
    commit_file,
    ctag,
    ensure_folders,
    etag,
    resolve,
)
from .state import DEFAULT_QUOTA, Account, Drive, EmulatorState, Item

bp = Blueprint("emulator_admin", __name__, url_prefix="/_emulator")


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    return data if isinstance(data, dict) else {}


def _bad(message: str, status: int = 400) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    return resp


def account_dict(account: Account) -> dict[str, Any]:
    """Return an account as the admin API shows it."""
    return {
        "email": account.email,
        "display_name": account.display_name,
        "drive_type": account.drive_type,
        "quota_total": account.quota_total,
        "user_id": account.user_id,
        "drive_id": account.drive_id,
        "quota_exceeded": account.quota_exceeded,
    }


def _account(state: EmulatorState, email: str) -> Account | Response:
    account = state.account(email)
    return account if account is not None else _bad(f"unknown account {email}", 404)


@bp.get("/health")
def health() -> Response:
    """Answer a liveness probe."""
    return jsonify({"ok": True})


@bp.post("/clients")
def register_client() -> Response:
    """Register an app."""
    body = _body()
    if not body.get("client_id") or not isinstance(body.get("redirect_uris", []), list):
        return _bad("client_id and redirect_uris (a list) are required")
    client = get_state().register_client(
        str(body["client_id"]),
        body.get("client_secret"),
        body.get("redirect_uris", []),
        body.get("app_name"),
    )
    return jsonify(
        {
            "client_id": client.client_id,
            "redirect_uris": client.redirect_uris,
            "app_name": client.app_name,
        }
    )


@bp.get("/clients")
def list_clients() -> Response:
    """List registered apps without their secrets."""
    state = get_state()
    return jsonify(
        [
            {
                "client_id": c.client_id,
                "redirect_uris": c.redirect_uris,
                "app_name": c.app_name,
                "public": c.client_secret is None,
            }
            for c in state.clients.values()
        ]
    )


@bp.post("/accounts")
def add_account() -> Response:
    """Create an account with an empty drive."""
    body = _body()
    if not body.get("email"):
        return _bad("email is required")
    try:
        account = get_state().add_account(
            str(body["email"]),
            str(body.get("display_name") or body["email"]),
            str(body.get("drive_type", "personal")),
            int(body.get("quota_total", DEFAULT_QUOTA)),
        )
    except ValueError as exc:
        return _bad(str(exc))
    return jsonify(account_dict(account))


@bp.get("/accounts")
def list_accounts() -> Response:
    """List accounts."""
    return jsonify([account_dict(a) for a in get_state().accounts.values()])


@bp.post("/token")
def mint_token() -> Response:
    """Issue tokens for an account without the browser dance (consent implied)."""
    state = get_state()
    body = _body()
    account = _account(state, str(body.get("email", "")))
    if isinstance(account, Response):
        return account
    client_id = str(body.get("client_id") or "")
    if not client_id:
        return _bad("client_id is required")
    scopes = str(body.get("scopes") or "offline_access User.Read Files.ReadWrite").split()
    return jsonify(token_body(state, account.email, client_id, scopes, None))


@bp.post("/faults/throttle")
def throttle() -> Response:
    """Answer 429 with Retry-After every Nth Graph request and/or for the next K."""
    body = _body()
    state = get_state()
    with state.lock:
        f = state.faults
        f.throttle_every = int(body["every"]) if body.get("every") else None
        f.throttle_count = int(body.get("count") or 0)
        f.retry_after = int(body.get("retry_after", 1))
    return jsonify({"ok": True})


@bp.post("/faults/fail")
def fail() -> Response:
    """Answer the next ``count`` Graph requests with a 5xx (503: Retry-After unless null)."""
    body = _body()
    status = int(body.get("status", 503))
    if status not in FAIL_STATUSES:
        return _bad("status must be 500, 502, 503 or 504")
    retry_after = body.get("retry_after", 1)
    state = get_state()
    with state.lock:
        state.faults.fail_status = status
        state.faults.fail_count = int(body.get("count", 1))
        state.faults.fail_retry_after = None if retry_after is None else int(retry_after)
    return jsonify({"ok": True})


@bp.post("/faults/expire-access-tokens")
def expire_access_tokens() -> Response:
    """Shorten access-token lifetimes."""
    get_state().expire_access_tokens(float(_body().get("after_seconds", 0)))
    return jsonify({"ok": True})


@bp.post("/faults/expire-upload-sessions")
def expire_upload_sessions() -> Response:
    """Expire every open upload session."""
    get_state().expire_upload_sessions()
    return jsonify({"ok": True})


def _arm(kind: str) -> Response:
    body = _body()
    state = get_state()
    try:
        with state.lock:
            state.faults.arm(kind, str(body.get("target", "fragment")), int(body.get("count", 1)))
    except ValueError as exc:
        return _bad(str(exc))
    return jsonify({"ok": True})


@bp.post("/faults/drop-connection")
def drop_connection() -> Response:
    """Cut the connection in the middle of the next request body(s), without close_notify."""
    return _arm("drop")


@bp.post("/faults/lose-response")
def lose_response() -> Response:
    """Do the next request(s) (store the fragment) but close the connection instead of answering."""
    return _arm("lose")


@bp.post("/faults/reset-connection")
def reset_connection() -> Response:
    """Abort the next connection(s) with an RST in the middle of the request body."""
    return _arm("reset")


@bp.post("/faults/delta-gone")
def delta_gone() -> Response:
    """Answer the next ``count`` delta requests carrying a token with 410 Gone and ``code``."""
    body = _body()
    state = get_state()
    try:
        with state.lock:
            state.faults.arm_delta_gone(
                str(body.get("code", "resyncChangesApplyDifferences")), int(body.get("count", 1))
            )
    except ValueError as exc:
        return _bad(str(exc))
    return jsonify({"ok": True})


@bp.get("/latency")
def get_latency() -> Response:
    """Return the delay added to every non-admin request."""
    return jsonify({"ms": round(get_state().latency * 1000)})


@bp.put("/latency")
def set_latency() -> Response:
    """Set the delay added to every non-admin request (until the next reset)."""
    try:
        get_state().set_latency(float(_body().get("ms", 0)) / 1000)
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    return get_latency()


@bp.delete("/faults")
def clear_faults() -> Response:
    """Switch every fault off."""
    state = get_state()
    with state.lock:
        state.faults.clear()
    return jsonify({"ok": True})


@bp.post("/accounts/<email>/revoke-consent")
def revoke_consent(email: str) -> Response:
    """Withdraw the user's consent."""
    state = get_state()
    account = _account(state, email)
    if isinstance(account, Response):
        return account
    state.revoke_consent(account.email)
    return jsonify({"ok": True})


@bp.post("/accounts/<email>/quota-exceeded")
def quota_exceeded(email: str) -> Response:
    """Make uploads answer 507 (or stop doing so)."""
    state = get_state()
    account = _account(state, email)
    if isinstance(account, Response):
        return account
    with state.lock:
        account.quota_exceeded = bool(_body().get("on", True))
    return jsonify(account_dict(account))


@bp.put("/accounts/<email>/items/<path:path>")
def modify_item(email: str, path: str) -> Response:
    """Create or change a file on the server side (new eTag, cTag and hash)."""
    state = get_state()
    account = _account(state, email)
    if isinstance(account, Response):
        return account
    names = [p for p in path.split("/") if p]
    if not names:
        return _bad("a file path is required")
    tmp = state.tmp_path()
    hasher = QuickXorHash()
    with open(tmp, "wb") as fh:
        size = copy_body(fh, request.content_length, hasher, 1 << 40)
    drive = state.drive_of(account)
    with state.lock:
        root = drive.items[drive.root_id]
        parent = ensure_folders(state, drive, root, names[:-1])
        try:
            where = resolve(state, drive, parent, names[-1:])
            item, _ = commit_file(
                state,
                account,
                drive,
                parent,
                names[-1],
                "replace",
                tmp,
                size,
                hasher.b64digest(),
                target=where.item,
            )
        except GraphProblem as p:
            return _bad(p.message, p.status)
        return jsonify(_listing(state, account, item.id)[0])


def _item_at(state: EmulatorState, drive: Drive, path: str) -> Item | None:
    """Return the live item at ``path`` ("/" or "" = the root), or None."""
    names = [p for p in path.split("/") if p]
    where = resolve(state, drive, drive.items[drive.root_id], names)
    return None if where.missing else where.item


def _changed_elsewhere(change: str) -> Response:
    """Rename, move or delete an item "from another device" (the Graph rules of PATCH/DELETE)."""
    state = get_state()
    email = str(request.view_args["email"]) if request.view_args else ""
    account = _account(state, email)
    if isinstance(account, Response):
        return account
    body = _body()
    path = str(body.get("path") or (request.view_args or {}).get("path") or "")
    drive = state.drive_of(account)
    with state.lock:
        try:
            item = _item_at(state, drive, path)
        except GraphProblem:
            item = None
        if item is None or item.parent_id is None:
            return _bad(f"no item at {path!r} (the root cannot be changed)", 404)
        if change == "delete":
            state.delete_item(drive, item)
            return jsonify({"ok": True})
        parent = drive.items[item.parent_id]
        name = item.name
        if change == "rename":
            name = str(body.get("new_name") or "")
        else:
            found = _item_at(state, drive, str(body.get("new_parent_path") or ""))
            if found is None or not found.is_folder:
                return _bad("the new parent folder does not exist", 404)
            cur: Item | None = found
            while cur is not None:
                if cur.id == item.id:
                    return _bad("a folder cannot be moved into itself", 400)
                cur = drive.items.get(cur.parent_id) if cur.parent_id else None
            parent = found
        try:
            check_new_path(state, drive, parent, [name])
        except GraphProblem as p:
            return _bad(p.message, p.status)
        clash = state.child_named(drive, parent.id, name)
        if clash is not None and clash.id != item.id:
            return _bad("the specified item name already exists", 409)
        # Like PATCH: a rename or move is a change to the item (new eTag), not to its content
        # (same cTag): https://learn.microsoft.com/graph/api/resources/driveitem (eTag, cTag).
        item.name, item.parent_id = name, parent.id
        state.bump(item)
        return jsonify(_listing(state, account, item.id)[0])


@bp.delete("/accounts/<email>/items/<path:path>")
def delete_item(email: str, path: str) -> Response:
    """Delete an item (and its descendants) as if from another device."""
    return _changed_elsewhere("delete")


@bp.post("/accounts/<email>/rename")
def rename_item(email: str) -> Response:
    """Rename an item as if from another device: ``path``, ``new_name``."""
    return _changed_elsewhere("rename")


@bp.post("/accounts/<email>/move")
def move_item(email: str) -> Response:
    """Move an item as if from another device: ``path``, ``new_parent_path`` ("/" = root)."""
    return _changed_elsewhere("move")


@bp.get("/accounts/<email>/items")
def list_items(email: str) -> Response:
    """List every live item of the account's drive."""
    state = get_state()
    account = _account(state, email)
    if isinstance(account, Response):
        return account
    return jsonify(_listing(state, account))


def _listing(state: EmulatorState, account: Account, only: str | None = None) -> list[dict]:
    drive = state.drive_of(account)
    out = []
    with state.lock:
        for item in drive.items.values():
            if item.deleted or item.parent_id is None or (only and item.id != only):
                continue
            out.append(
                {
                    "path": state.item_path(drive, item),
                    "id": item.id,
                    "name": item.name,
                    "size": item.size,
                    "quickXorHash": item.quick_xor,
                    "eTag": etag(item),
                    "cTag": ctag(item),
                    "folder": item.is_folder,
                }
            )
    return sorted(out, key=lambda d: d["path"].casefold())


@bp.get("/requests")
def requests_log() -> Response:
    """Return the request log."""
    state = get_state()
    with state.lock:
        return jsonify(list(state.requests))


@bp.delete("/requests")
def clear_requests() -> Response:
    """Clear the request log."""
    state = get_state()
    with state.lock:
        state.requests.clear()
    return jsonify({"ok": True})


@bp.post("/reset")
def reset() -> Response:
    """Wipe drives, tokens, sessions, faults and the log (registered clients stay)."""
    get_state().reset()
    return jsonify({"ok": True})
