"""Uploads: one simple PUT for small files, resumable upload sessions for the rest.

Microsoft's rules, from https://learn.microsoft.com/graph/api/driveitem-createuploadsession:

- fragments are multiples of 320 KiB (327,680 bytes), except the last, and under 60 MiB;
- the ``uploadUrl`` is pre-authenticated: "Including the Authorization header when issuing the
  PUT call might result in an HTTP 401 Unauthorized response", so it never gets one here;
- after a dropped connection or a 5xx, ask the session (GET ``uploadUrl``) for
  ``nextExpectedRanges`` and resume; a 416 means the fragment was already received;
- a 404 means the session is gone: start over with a new one.

Small files use ``PUT …/content`` (https://learn.microsoft.com/graph/api/driveitem-put-content),
always for zero-byte files (an upload session cannot carry zero bytes). That PUT cannot set
``fileSystemInfo``; we do not PATCH it afterwards because that creates a second version. Pass
``simple_max=0`` to send every non-empty file through a session when the timestamp matters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, TypedDict
from urllib.parse import quote, urlsplit

import requests
from typing_extensions import Unpack

from drivesync.graph.client import GraphClient
from drivesync.graph.errors import (
    FileTooLargeError,
    GraphError,
    IntegrityError,
    NameNotAllowedError,
    from_response,
    network_error,
)
from drivesync.graph.names import MAX_FILE_SIZE, validate_name
from drivesync.graph.quickxor import QuickXorHash
from drivesync.graph.retry import should_retry
from drivesync.graph.types import BUSINESS_DRIVE_TYPES, DriveItem

logger = logging.getLogger(__name__)

FRAGMENT_MULTIPLE = 320 * 1024  # 327,680 bytes
MAX_FRAGMENT = 60 * 1024 * 1024
DEFAULT_FRAGMENT = 10 * 1024 * 1024  # Microsoft's recommendation for stable connections
SIMPLE_MAX = 4 * 1024 * 1024
CONFLICT_BEHAVIORS = ("fail", "replace", "rename")
_HASH_SLICE = 2 * 1024 * 1024  # bounds the hash's temporary copies

# SharePoint and OneDrive for Business write their own metadata into Office documents after an
# upload, so size and hash legitimately change (https://rclone.org/onedrive/#limitations,
# "Unexpected file size/hash differences on Sharepoint").
OFFICE_EXTENSIONS = frozenset(
    {
        ".doc", ".docx", ".docm", ".dot", ".dotx", ".dotm",
        ".xls", ".xlsx", ".xlsm", ".xlsb", ".xlt", ".xltx", ".xltm",
        ".ppt", ".pptx", ".pptm", ".pot", ".potx", ".potm", ".pps", ".ppsx", ".ppsm",
        ".vsd", ".vsdx", ".vsdm", ".one",
    }
)  # fmt: skip

SessionCallback = Callable[[str, datetime | None], None]
ProgressCallback = Callable[[int, int], None]


class UploadOptions(TypedDict, total=False):
    """How to upload one file: the one signature ``upload_file`` and every ``Drive`` take.

    ``conflict_behavior`` is "fail" (the default), "replace" or "rename"; ``if_match`` an eTag
    or cTag the target must still have; ``resume`` a stored session to continue; ``on_session``
    hears each new session (URL and expiry) and ``on_progress`` the bytes OneDrive accepted.
    """

    conflict_behavior: str
    if_match: str | None
    fragment_size: int
    modified_at: datetime | None
    on_progress: ProgressCallback | None
    resume: ResumeState | None
    on_session: SessionCallback | None


@dataclass(frozen=True)
class ResumeState:
    """A stored upload session to continue after a restart. The URL is a credential."""

    upload_url: str = field(repr=False)
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        host = urlsplit(self.upload_url).netloc
        return f"ResumeState(upload_url=<{host}/…>, expires_at={self.expires_at!r})"


@dataclass
class UploadResult:
    """What an upload produced, and whether OneDrive holds exactly our bytes."""

    item: DriveItem = field(repr=False)  # may hold @microsoft.graph.downloadUrl: a credential
    quick_xor_hash: str
    remote_hash: str | None
    hash_matched: bool
    service_modified: bool = False
    sessions: int = 0  # upload sessions opened (0 for a simple PUT)


def validate_fragment_size(size: int) -> int:
    """Return ``size`` if it is a positive multiple of 320 KiB no larger than 60 MiB."""
    if size <= 0 or size % FRAGMENT_MULTIPLE:
        raise ValueError(f"fragment size must be a positive multiple of {FRAGMENT_MULTIPLE} bytes")
    if size > MAX_FRAGMENT:
        raise ValueError(f"fragment size must be at most {MAX_FRAGMENT} bytes (60 MiB)")
    return size


def parse_next_expected(ranges: list[str] | None) -> int | None:
    """Return the first missing byte from ``nextExpectedRanges`` ("N-", "N-M" or "N"), or None."""
    starts = []
    for value in ranges or []:
        head = str(value).strip().split("-", 1)[0]
        if head.isdigit():
            starts.append(int(head))
    return min(starts) if starts else None


def cancel_session(upload_url: str, session: requests.Session | None = None) -> None:
    """Delete an upload session (no Authorization header: the URL is pre-authenticated)."""
    http = session or requests.Session()
    try:
        resp = http.delete(upload_url, timeout=(10, 30))
    except requests.exceptions.RequestException as exc:
        raise network_error(exc) from None
    with resp:
        if resp.status_code >= 400 and resp.status_code != 404:
            raise from_response(resp, secrets=(upload_url,))


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_dt(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _remote_hash(item: DriveItem) -> str | None:
    return ((item.get("file") or {}).get("hashes") or {}).get("quickXorHash")


def _is_business(item: DriveItem) -> bool:
    return (item.get("parentReference") or {}).get("driveType") in BUSINESS_DRIVE_TYPES


class _SessionGone(Exception):
    """The upload session no longer exists (404, or expired): open a new one."""


class _StreamHasher:
    """quickXorHash of a file, fed by the fragments as they are sent, tolerant of re-sends.

    Bytes are hashed once, in order: a re-sent range is skipped, and a range the server says it
    already holds (resume after a restart) is read from disk in slices, so memory stays flat.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self._hash = QuickXorHash()
        self.upto = 0

    def _update(self, view: memoryview) -> None:
        for i in range(0, len(view), _HASH_SLICE):
            self._hash.update(view[i : i + _HASH_SLICE])

    def feed(self, offset: int, data: bytes) -> None:
        """Hash the part of ``data`` (which starts at ``offset``) not hashed yet."""
        if offset > self.upto:
            self.catch_up(offset)
        end = offset + len(data)
        if end > self.upto:
            self._update(memoryview(data)[self.upto - offset :])
            self.upto = end

    def catch_up(self, offset: int) -> None:
        """Hash the file from where we are up to ``offset``, reading it from disk."""
        while self.upto < offset:
            self._fh.seek(self.upto)
            chunk = self._fh.read(min(_HASH_SLICE, offset - self.upto))
            if not chunk:
                raise GraphError(
                    "the file shrank while uploading", code="fileChanged", retryable=False
                )
            self._hash.update(chunk)
            self.upto += len(chunk)

    def b64digest(self) -> str:
        """Return the base64 quickXorHash of everything hashed."""
        return self._hash.b64digest()


class _Uploader:
    """One upload: the simple PUT, or a session sent fragment by fragment."""

    def __init__(
        self,
        client: GraphClient,
        local_path: str | os.PathLike[str],
        parent_id: str,
        name: str,
        options: UploadOptions,
        max_sessions: int,
        http: requests.Session | None,
    ) -> None:
        self.client = client
        self.local_path = local_path
        self.parent_id = parent_id
        self.name = name
        self.conflict_behavior = options.get("conflict_behavior", "fail")
        self.fragment_size = options.get("fragment_size", DEFAULT_FRAGMENT)
        self.modified_at = options.get("modified_at")
        self.if_match = options.get("if_match")
        self.on_progress = options.get("on_progress")
        self.on_session = options.get("on_session")
        self.max_sessions = max_sessions
        # A separate session with no auth configured: the uploadUrl never sees a bearer token.
        self.http = http or client.plain_session
        self.target = f"/me/drive/items/{quote(parent_id, safe='')}:/{quote(name, safe='')}:"
        self.sessions = 0
        self.ambiguous = False  # a request may have succeeded without us seeing the answer

    # -- simple PUT ------------------------------------------------------------------------------

    def simple(self, size: int) -> tuple[DriveItem, str]:
        with open(self.local_path, "rb") as fh:
            data = fh.read(size + 1)
        if len(data) != size:
            raise GraphError(
                "the file changed size while uploading", code="fileChanged", retryable=False
            )
        local_hash = QuickXorHash(data).b64digest()
        headers = {"Content-Type": "application/octet-stream"}
        if self.if_match:
            headers["If-Match"] = self.if_match

        def attempt() -> DriveItem:
            try:
                resp = self.client.request(
                    "PUT",
                    f"{self.target}/content",
                    params={"@microsoft.graph.conflictBehavior": self.conflict_behavior},
                    data=data,
                    headers=headers,
                    retry=False,
                )
            except GraphError as exc:
                self.note_failure(exc)
                if exc.status == 409 and self.ambiguous:
                    found = self.already_there(local_hash)
                    if found is not None:
                        return found
                raise
            with resp:
                item: DriveItem = resp.json()
            return item

        item = self.client.pacer.call(attempt)
        if self.on_progress:
            self.on_progress(size, size)
        return item, local_hash

    def note_failure(self, exc: GraphError) -> None:
        """Remember that a failed request may still have reached OneDrive (retried or cut)."""
        if exc.code == "networkError" or should_retry(exc)[0]:
            self.ambiguous = True

    def already_there(self, local_hash: str) -> DriveItem | None:
        """Return the item at our target if it already holds exactly our bytes."""
        try:
            item = self.client.get_child(self.parent_id, self.name)
        except GraphError as exc:
            if exc.status == 404:
                return None
            raise
        if _remote_hash(item) == local_hash:
            logger.info("Upload outcome was unknown; the item on OneDrive has our hash")
            return item
        return None

    # -- upload sessions -------------------------------------------------------------------------

    def create_session(self) -> tuple[str, datetime | None, int]:
        if self.sessions >= self.max_sessions:
            raise GraphError(
                f"gave up after {self.sessions} upload sessions",
                code="uploadSessionFailed",
                retryable=True,
            )
        self.sessions += 1
        item: dict[str, Any] = {
            # Always sent: the docs disagree about the default for upload sessions.
            "@microsoft.graph.conflictBehavior": self.conflict_behavior,
            "name": self.name,
        }
        if self.modified_at is not None:
            item["fileSystemInfo"] = {"lastModifiedDateTime": _iso(self.modified_at)}
        headers = {"If-Match": self.if_match} if self.if_match else None
        resp = self.client.request(
            "POST", f"{self.target}/createUploadSession", json={"item": item}, headers=headers
        )
        with resp:
            body = resp.json()
        url = body.get("uploadUrl")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise GraphError("createUploadSession returned no uploadUrl", code="badResponse")
        expires = _parse_dt(body.get("expirationDateTime"))
        if self.on_session:
            self.on_session(url, expires)
        logger.info("Opened upload session %d on %s", self.sessions, urlsplit(url).netloc)
        return url, expires, parse_next_expected(body.get("nextExpectedRanges")) or 0

    def status(self, url: str) -> int | None:
        """Return the next byte the session expects (None: nothing more); _SessionGone if gone."""

        def ask() -> int | None:
            try:
                resp = self.http.get(url, timeout=self.client.timeout)
            except requests.exceptions.RequestException as exc:
                raise network_error(exc) from None
            with resp:
                if resp.status_code in (404, 401):
                    raise _SessionGone()
                if resp.status_code >= 400:
                    raise from_response(resp, secrets=(url,))
                try:
                    body = resp.json()
                except ValueError:
                    body = {}
                return parse_next_expected(body.get("nextExpectedRanges"))

        return self.client.pacer.call(ask)

    def send_fragment(
        self, url: str, fh: IO[bytes], hasher: _StreamHasher, offset: int, size: int
    ) -> requests.Response:
        """PUT the fragment that starts at ``offset``; a transport failure is a GraphError."""
        length = min(self.fragment_size, size - offset)
        fh.seek(offset)
        data = fh.read(length)
        if len(data) != length:
            raise GraphError("the file shrank while uploading", code="fileChanged", retryable=False)
        hasher.feed(offset, data)
        headers = {
            "Content-Length": str(length),
            "Content-Range": f"bytes {offset}-{offset + length - 1}/{size}",
        }
        try:
            return self.http.put(url, data=data, headers=headers, timeout=self.client.timeout)
        except requests.exceptions.RequestException as exc:
            logger.info("Fragment at %d failed: %s", offset, type(exc).__name__)
            raise network_error(exc) from None

    def fragment(
        self, url: str, fh: IO[bytes], hasher: _StreamHasher, offset: int, size: int
    ) -> DriveItem | int:
        """Send one fragment in a single paced call; return the item (done) or the next offset.

        Before every retry the session is asked where to go on (a dropped connection or a lost
        answer may have stored part or all of the fragment). _SessionGone: open a new session.
        """
        tries = 0

        def attempt() -> DriveItem | int:
            nonlocal offset, tries
            tries += 1
            if tries > 1:
                offset = self.where(url, size)
            strikes_416 = 0
            while True:
                if offset >= size:
                    raise _SessionGone()  # the server holds every byte; its answer was lost
                try:
                    resp = self.send_fragment(url, fh, hasher, offset, size)
                except GraphError as exc:
                    self.note_failure(exc)
                    raise
                with resp:
                    code = resp.status_code
                    if code in (200, 201):
                        item: DriveItem = resp.json()
                        return item
                    if code == 202:
                        return self.accepted(resp, offset, size)
                    if code in (404, 401):
                        raise _SessionGone()  # expired or unknown session
                    if code == 416 and strikes_416 < 3:
                        # "Already received": ask where to go on, without sleeping.
                        strikes_416 += 1
                        offset = self.where(url, size)
                        continue
                    err = from_response(resp, secrets=(url,))
                self.note_failure(err)
                if code == 409 and self.ambiguous:
                    raise _SessionGone()  # maybe our own earlier completion
                raise err

        return self.client.pacer.call(attempt)

    def session_upload(self, size: int, resume: ResumeState | None) -> tuple[DriveItem, str]:
        """Upload through a session: an outer loop over fragments, each one paced call."""
        with open(self.local_path, "rb") as fh:
            hasher = _StreamHasher(fh)
            url, offset = self.open(size, resume)
            while True:
                try:
                    sent = self.fragment(url, fh, hasher, offset, size)
                except _SessionGone:
                    if self.ambiguous or offset >= size:
                        hasher.catch_up(size)
                        found = self.already_there(hasher.b64digest())
                        if found is not None:
                            return found, hasher.b64digest()
                    url, _expires, offset = self.create_session()
                    continue
                if isinstance(sent, int):
                    offset = sent
                    continue
                if self.on_progress:
                    self.on_progress(size, size)
                hasher.catch_up(size)
                return sent, hasher.b64digest()

    def open(self, size: int, resume: ResumeState | None) -> tuple[str, int]:
        """Return the session URL and offset to start from: the stored session, or a new one."""
        if resume is not None:
            expires = resume.expires_at
            if expires is not None and expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            if expires is None or expires > datetime.now(UTC):
                try:
                    offset = self.where(resume.upload_url, size)
                    logger.info("Resuming a stored upload session at byte %d", offset)
                    return resume.upload_url, offset
                except _SessionGone:
                    logger.info("The stored upload session is gone; opening a new one")
        url, _expires, offset = self.create_session()
        return url, offset

    def accepted(self, resp: requests.Response, offset: int, size: int) -> int:
        """Return the next offset after a 202, trusting the server's nextExpectedRanges."""
        sent_to = offset + min(self.fragment_size, size - offset)
        try:
            nxt = parse_next_expected(resp.json().get("nextExpectedRanges"))
        except (ValueError, AttributeError):
            nxt = None
        offset = sent_to if nxt is None else nxt
        if self.on_progress:
            self.on_progress(min(offset, size), size)
        return offset

    def where(self, url: str, size: int) -> int:
        """Return the offset the session expects next (``size`` if none); _SessionGone if gone."""
        nxt = self.status(url)
        return size if nxt is None else nxt


def upload_file(
    client: GraphClient,
    local_path: str | os.PathLike[str],
    parent_id: str,
    name: str,
    *,
    simple_max: int = SIMPLE_MAX,
    max_sessions: int = 3,
    upload_session: requests.Session | None = None,
    **options: Unpack[UploadOptions],
) -> UploadResult:
    """Upload a local file as ``name`` into the folder ``parent_id`` and verify its hash.

    Raise ``IntegrityError`` when OneDrive's quickXorHash differs from ours, except for Office
    documents on business drives, which the service rewrites (``service_modified=True``).
    """
    up = _Uploader(client, local_path, parent_id, name, options, max_sessions, upload_session)
    resume = options.get("resume")
    if up.conflict_behavior not in CONFLICT_BEHAVIORS:
        raise ValueError(f"conflict_behavior must be one of {CONFLICT_BEHAVIORS}")
    validate_fragment_size(up.fragment_size)
    if simple_max > MAX_FRAGMENT:
        raise ValueError("simple_max must be at most 60 MiB")
    reason = validate_name(name)
    if reason:
        raise NameNotAllowedError(reason, name)
    size = os.stat(local_path).st_size
    if size > MAX_FILE_SIZE:
        raise FileTooLargeError(size, MAX_FILE_SIZE)
    if size == 0 or (size <= simple_max and resume is None):
        item, local_hash = up.simple(size)
    else:
        item, local_hash = up.session_upload(size, resume)
    return _verify(client, item, local_hash, name, up.sessions)


def _verify(
    client: GraphClient, item: DriveItem, local_hash: str, name: str, sessions: int
) -> UploadResult:
    remote = _remote_hash(item)
    if remote is None and "id" in item:
        # Business computes hashes asynchronously: the upload answer may lack them.
        try:
            item = client.get_item(item["id"])
            remote = _remote_hash(item)
        except GraphError as exc:
            logger.info("Could not re-read the uploaded item for its hash: %s", exc.code)
    if remote is None:
        logger.info("OneDrive returned no quickXorHash for the uploaded item")
        return UploadResult(item, local_hash, None, hash_matched=False, sessions=sessions)
    if remote == local_hash:
        return UploadResult(item, local_hash, remote, hash_matched=True, sessions=sessions)
    if _is_business(item) and os.path.splitext(name)[1].lower() in OFFICE_EXTENSIONS:
        logger.info("Office document rewritten by the service after upload (hash differs)")
        return UploadResult(
            item, local_hash, remote, hash_matched=False, service_modified=True, sessions=sessions
        )
    raise IntegrityError(local_hash, remote, item.get("id"))
