"""Upload sessions (``/_upload/<id>``) and pre-authenticated downloads (``/_download/<token>``).

Rules from https://learn.microsoft.com/graph/api/driveitem-createuploadsession :

- PUT fragments with ``Content-Length`` and ``Content-Range: bytes a-b/total``; the total must be
  the same in every request; fragments go "sequentially in order" ("Uploading fragments out of
  order results in an error"); each byte range except the last "MUST be a multiple of 320 KiB
  (327,680 bytes)"; "the maximum bytes in any given request is less than 60 MiB" — enforced here
  as at most 60 MiB (a 60 MiB fragment is 192 x 320 KiB), larger ones get 413.
- 202 with ``nextExpectedRanges`` (``"N-"`` on OneDrive Personal, ``"N-M"`` on Business); the
  last byte commits: 201 Created or 200 OK with the driveItem; a name conflict with ``fail``
  answers 409 ``nameAlreadyExists``.
- "the server responds with HTTP 416 Requested Range Not Satisfiable" when a fragment was
  already received; GET the URL for the status; DELETE cancels (204); an expired session is
  404 ("Handle 404 Not Found errors when doing resumable uploads by starting the entire upload
  over").
- "If you include the Authorization header when issuing the PUT call, it may result in an
  HTTP 401 Unauthorized response": here it always does, on every method.
- "If an upload request is disconnected or fails before the request is completed, all bytes in
  that request are ignored."
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, g, request, send_file

from .bodies import Incomplete, copy_body
from .identity import get_state
from .items import (
    GraphProblem,
    check_download_token,
    check_quota,
    commit_file,
    item_json,
    not_found,
)
from .responses import graph_error, graph_json
from .state import UPLOAD_SESSION_LIFETIME, EmulatorState, UploadSession, iso, utcnow

bp = Blueprint("emulator_uploads", __name__)

FRAGMENT_UNIT = 327_680  # 320 KiB
MAX_FRAGMENT = 60 * 1024 * 1024
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def next_expected_ranges(session: UploadSession, drive_type: str) -> list[str]:
    """Return ``nextExpectedRanges``: ``["N-"]`` (personal) or ``["N-M"]`` (business)."""
    if session.total is not None and session.received >= session.total:
        return []
    if drive_type == "business" and session.total is not None:
        return [f"{session.received}-{session.total - 1}"]
    return [f"{session.received}-"]


def session_status(state: EmulatorState, session: UploadSession) -> dict[str, Any]:
    """Return the uploadSession status body (and note the offset for the request log)."""
    drive = state.drives[session.drive_id.casefold()]
    g.next_expected = session.received
    return {
        "expirationDateTime": iso(session.expires_at),
        "nextExpectedRanges": next_expected_ranges(session, drive.drive_type),
    }


def _problem(p: GraphProblem) -> Response:
    return graph_error(p.status, p.code, p.message, p.inner)


@bp.route("/_upload/<session_id>", methods=["GET", "PUT", "DELETE", "POST"])
def upload_url(session_id: str) -> Response:
    """Serve the pre-authenticated upload URL."""
    state = get_state()
    if "Authorization" in request.headers:
        return graph_error(
            401,
            "unauthenticated",
            "The uploadUrl is pre-authenticated: do not send an Authorization header to it.",
        )
    session = state.live_session(session_id)
    if session is None:
        return graph_error(
            404,
            "itemNotFound",
            "The upload session was not found or has expired.",
            "uploadSessionNotFound",
        )
    if request.method == "GET":
        return graph_json(session_status(state, session))
    if request.method == "DELETE":
        with state.lock:
            state._expire(session)
        return Response(status=204)
    if request.method == "POST":
        return _explicit_commit(state, session)
    try:
        return _put_fragment(state, session)
    except GraphProblem as p:
        return _problem(p)


def _parse_range(session: UploadSession) -> tuple[int, int, int, int]:
    length = request.content_length
    if length is None:
        raise GraphProblem(411, "invalidRequest", "A Content-Length header is required.")
    match = _RANGE.match(request.headers.get("Content-Range", "").strip())
    if not match:
        raise GraphProblem(
            400,
            "invalidRequest",
            "A Content-Range header of the form 'bytes a-b/total' is required.",
        )
    start, end, total = (int(x) for x in match.groups())
    if end < start or end >= total:
        raise GraphProblem(416, "invalidRange", "The Content-Range is not valid.")
    if length != end - start + 1:
        raise GraphProblem(
            400, "invalidRequest", "Content-Length does not match the Content-Range."
        )
    if session.total is not None and total != session.total:
        raise GraphProblem(
            400,
            "invalidRequest",
            "Declared total size for this fragment is different from that of the upload session.",
            "fragmentLengthMismatch",
        )
    if length > MAX_FRAGMENT:
        raise GraphProblem(
            413, "invalidRequest", "A fragment must be at most 60 MiB.", "maxFragmentLengthExceeded"
        )
    if start < session.received or session.completed:
        raise GraphProblem(
            416,
            "invalidRange",
            "The uploaded fragment overlaps with data already received.",
            "fragmentOverlap",
        )
    if start > session.received:
        raise GraphProblem(
            416,
            "invalidRange",
            "The uploaded fragment is out of order; see nextExpectedRanges.",
            "fragmentOutOfOrder",
        )
    if end + 1 < total and length % FRAGMENT_UNIT:
        raise GraphProblem(
            400,
            "invalidRequest",
            "The size of each fragment except the last "
            "must be a multiple of 320 KiB (327,680 bytes).",
        )
    return start, end, total, length


def _put_fragment(state: EmulatorState, session: UploadSession) -> Response:
    with state.lock:
        if session.busy:
            raise GraphProblem(
                416,
                "invalidRange",
                "Another fragment of this session is being uploaded.",
                "fragmentOverlap",
            )
        start, end, total, length = _parse_range(session)
        account = state.account(session.email)
        assert account is not None  # noqa: S101
        if account.quota_exceeded:
            check_quota(account, 0, 0)
        session.busy = True
    try:
        hasher = session.hash.copy()
        try:
            with open(session.part_path, "r+b") as fh:
                fh.seek(start)
                copy_body(fh, length, hasher, length)
        except Incomplete:
            with open(session.part_path, "r+b") as fh:
                fh.truncate(session.received)
            raise GraphProblem(400, "invalidRequest", "The request body was incomplete.") from None
        with state.lock:
            session.total = total
            session.received = end + 1
            session.hash = hasher
            session.expires_at = utcnow() + UPLOAD_SESSION_LIFETIME
        if session.received < total or session.defer_commit:
            return graph_json(session_status(state, session), 202)
        g.next_expected = session.received
        return _commit(state, session)
    finally:
        session.busy = False


def _commit(state: EmulatorState, session: UploadSession) -> Response:
    drive = state.drives[session.drive_id.casefold()]
    account = state.account(session.email)
    assert account is not None  # noqa: S101
    with state.lock:
        parent = drive.items.get(session.parent_id)
        target = drive.items.get(session.target_item_id) if session.target_item_id else None
        if parent is None or parent.deleted:
            raise not_found("The parent folder no longer exists.")
        item, created = commit_file(
            state,
            account,
            drive,
            parent,
            session.name,
            session.conflict,
            session.part_path,
            session.total or 0,
            session.hash.b64digest(),
            target=target,
            fs_times=(session.fs_created, session.fs_modified),
        )
        session.completed = True
        body = item_json(state, drive, item, request.url_root)
    return graph_json(body, 201 if created else 200)


def _explicit_commit(state: EmulatorState, session: UploadSession) -> Response:
    """Complete a ``deferCommit`` session with an empty POST (OneDrive for Business)."""
    drive = state.drives[session.drive_id.casefold()]
    if drive.drive_type != "business":
        return graph_error(
            400,
            "notSupported",
            "Committing with POST is only supported on OneDrive for Business and SharePoint.",
        )
    if not session.defer_commit or session.total is None or session.received < session.total:
        return graph_error(
            400, "invalidRequest", "The upload session is incomplete.", "uploadSessionIncomplete"
        )
    try:
        return _commit(state, session)
    except GraphProblem as p:
        return _problem(p)


@bp.route("/_download/<token>", methods=["GET", "HEAD"])
def download(token: str) -> Response:
    """Serve file bytes for a signed, short-lived download URL (Range supported)."""
    state = get_state()
    ids = check_download_token(state, token)
    if ids is None:
        return graph_error(401, "unauthenticated", "The download URL is invalid or expired.")
    with state.lock:
        drive = state.drives.get(ids[0].casefold())
        item = drive.items.get(ids[1]) if drive else None
        if item is None or item.deleted or item.blob is None:
            return graph_error(404, "itemNotFound", "The resource could not be found.")
        blob, mime, name = item.blob, item.mime_type, item.name
    try:
        resp = send_file(
            blob, mimetype=mime, download_name=name, conditional=True, etag=False, max_age=0
        )
    except FileNotFoundError:
        return graph_error(404, "itemNotFound", "The resource could not be found.")
    return resp
