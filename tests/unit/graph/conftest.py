"""Fixtures for the Graph package: a recording pacer, a client, and a fake upload-session server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import responses

from drivesync.graph.client import GraphClient
from drivesync.graph.quickxor import QuickXorHash
from drivesync.graph.retry import Pacer

GRAPH = "https://graph.microsoft.com/v1.0"
UPLOAD_HOST = "https://up.fake-1drv.test"
TOKEN = "access-token-AAAA"
FRESH_TOKEN = "access-token-BBBB"


class TokenProvider:
    """Hands out TOKEN, or FRESH_TOKEN when forced, and records every call."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, force_refresh: bool) -> str:
        self.calls.append(force_refresh)
        return FRESH_TOKEN if force_refresh or True in self.calls else TOKEN


@pytest.fixture
def sleeps() -> list[float]:
    """The waits the pacer asked for, instead of sleeping."""
    return []


@pytest.fixture
def pacer(sleeps: list[float]) -> Pacer:
    """A pacer that records its waits and jitters to half the ceiling."""
    return Pacer(sleep=sleeps.append, rand=lambda: 0.5)


@pytest.fixture
def tokens() -> TokenProvider:
    """A recording token provider."""
    return TokenProvider()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """Mocked HTTP; every registered response need not be used."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def client(tokens: TokenProvider, pacer: Pacer, rsps: responses.RequestsMock) -> GraphClient:
    """A GraphClient on the mocked transport."""
    return GraphClient(tokens, base_url=GRAPH, pacer=pacer)


@dataclass
class FakeSession:
    """One upload session on the fake server."""

    sid: str
    name: str
    size: int | None = None
    data: bytearray = field(default_factory=bytearray)
    alive: bool = True


class FakeUploadServer:
    """Enough of OneDrive's upload sessions to exercise every branch of upload.py.

    ``faults`` is consumed one entry per fragment PUT: None (behave), an int status to answer,
    "drop" (connection dies before the server stores anything), "drop-after-store" (the server
    stores the fragment, the client never hears back) or "expire" (the session vanishes: 404);
    an exception instance is raised before storing, ``("after-store", exc)`` after storing.
    """

    def __init__(
        self,
        rsps: responses.RequestsMock,
        parent_id: str = "PARENT",
        drive_type: str = "personal",
        range_form: str = "personal",
    ) -> None:
        self.rsps = rsps
        self.parent_id = parent_id
        self.drive_type = drive_type
        self.range_form = range_form
        self.sessions: dict[str, FakeSession] = {}
        self.faults: list[Any] = []
        self.simple_faults: list[Any] = []
        self.remote_hash_override: str | None = None
        self.creates: list[dict[str, Any]] = []
        self.create_headers: list[dict[str, str]] = []
        self.puts: list[tuple[str, str, int]] = []  # (sid, Content-Range, body length)
        self.status_gets: list[str] = []
        self.upload_host_requests: list[requests.PreparedRequest] = []
        self.simple_puts: list[requests.PreparedRequest] = []
        self.committed: dict[str, bytes] = {}
        self._next = 0
        prefix = re.escape(f"{GRAPH}/me/drive/items/{parent_id}:/")
        rsps.add_callback(
            responses.POST, re.compile(prefix + r"[^/]+:/createUploadSession"), self._create
        )
        rsps.add_callback(responses.PUT, re.compile(prefix + r"[^/]+:/content.*"), self._simple)
        rsps.add_callback(responses.GET, re.compile(prefix + r"[^/]+:$"), self._get_child)
        up = re.compile(re.escape(UPLOAD_HOST) + r"/up/.*")
        rsps.add_callback(responses.PUT, up, self._put)
        rsps.add_callback(responses.GET, up, self._status)
        rsps.add_callback(responses.DELETE, up, self._delete)

    # -- helpers ---------------------------------------------------------------------------------

    def url_for(self, sid: str) -> str:
        """Return the pre-authenticated URL of a session (its query string is the credential)."""
        return f"{UPLOAD_HOST}/up/{sid}?tempauth=SECRET-{sid}"

    def open_session(self, name: str, data: bytes = b"") -> FakeSession:
        """Create a session directly, as if a previous process had opened it."""
        self._next += 1
        sid = f"s{self._next}"
        session = FakeSession(sid, name, data=bytearray(data))
        self.sessions[sid] = session
        return session

    def _ranges(self, start: int, size: int | None) -> list[str]:
        if self.range_form == "business" and size is not None:
            return [f"{start}-{size - 1}"]
        return [f"{start}-"]

    def _item(self, name: str, data: bytes) -> dict[str, Any]:
        self.committed[name] = data
        digest = self.remote_hash_override or QuickXorHash(data).b64digest()
        return {
            "id": f"ITEM-{name}",
            "name": name,
            "size": len(data),
            "file": {"hashes": {"quickXorHash": digest}, "mimeType": "application/octet-stream"},
            "parentReference": {"id": self.parent_id, "driveType": self.drive_type},
        }

    @staticmethod
    def _sid(request: requests.PreparedRequest) -> str:
        assert request.url is not None
        return request.url.split("/up/", 1)[1].split("?", 1)[0]

    # -- callbacks -------------------------------------------------------------------------------

    def _create(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body or b"{}")
        self.creates.append(body)
        self.create_headers.append(dict(request.headers))
        session = self.open_session(body["item"]["name"])
        return (
            200,
            {},
            json.dumps(
                {
                    "uploadUrl": self.url_for(session.sid),
                    "expirationDateTime": "2030-01-01T00:00:00Z",
                    "nextExpectedRanges": ["0-"],
                }
            ),
        )

    def _simple(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.simple_puts.append(request)
        assert request.url is not None
        name = request.url.split(f"{self.parent_id}:/", 1)[1].split(":/content", 1)[0]
        data = bytes(request.body or b"")
        fault = self.simple_faults.pop(0) if self.simple_faults else None
        if name in self.committed and "conflictBehavior=fail" in request.url.replace("%40", "@"):
            body = {"error": {"code": "nameAlreadyExists", "message": "exists"}}
            return 409, {}, json.dumps(body)
        reply = (201, {}, json.dumps(self._item(name, data)))
        if fault == "drop-after-store":
            raise requests.exceptions.ConnectionError("connection reset after store")
        if isinstance(fault, tuple) and fault[0] == "after-store":
            raise fault[1]
        return reply

    def _get_child(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        assert request.url is not None
        name = request.url.split(f"{self.parent_id}:/", 1)[1].rstrip(":")
        if name not in self.committed:
            return 404, {}, json.dumps({"error": {"code": "itemNotFound", "message": "nope"}})
        return 200, {}, json.dumps(self._item(name, self.committed[name]))

    def _put(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.upload_host_requests.append(request)
        sid = self._sid(request)
        content_range = request.headers["Content-Range"]
        body = bytes(request.body or b"")
        self.puts.append((sid, content_range, len(body)))
        fault = self.faults.pop(0) if self.faults else None
        session = self.sessions.get(sid)
        if fault == "drop":
            raise requests.exceptions.ConnectionError("connection reset by peer")
        if isinstance(fault, BaseException):
            raise fault
        if fault == "expire" and session:
            session.alive = False
        if isinstance(fault, int):
            return fault, {}, json.dumps({"error": {"code": "injected", "message": "fault"}})
        if session is None or not session.alive:
            return 404, {}, json.dumps({"error": {"code": "itemNotFound", "message": "gone"}})
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range)
        assert m, content_range
        start, end, total = (int(g) for g in m.groups())
        assert end - start + 1 == len(body)
        session.size = total
        if start != len(session.data):
            return 416, {}, json.dumps({"error": {"code": "invalidRange", "message": "range"}})
        session.data.extend(body)
        if len(session.data) == total:
            session.alive = False
            reply = (201, {}, json.dumps(self._item(session.name, bytes(session.data))))
        else:
            reply = (
                202,
                {},
                json.dumps(
                    {
                        "expirationDateTime": "2030-01-01T00:00:00Z",
                        "nextExpectedRanges": self._ranges(len(session.data), total),
                    }
                ),
            )
        if fault == "drop-after-store":
            raise requests.exceptions.ConnectionError("connection reset after store")
        if isinstance(fault, tuple) and fault[0] == "after-store":
            raise fault[1]
        return reply

    def _status(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.upload_host_requests.append(request)
        sid = self._sid(request)
        self.status_gets.append(sid)
        session = self.sessions.get(sid)
        if session is None or not session.alive:
            return 404, {}, json.dumps({"error": {"code": "itemNotFound", "message": "gone"}})
        return (
            200,
            {},
            json.dumps(
                {
                    "expirationDateTime": "2030-01-01T00:00:00Z",
                    "nextExpectedRanges": self._ranges(len(session.data), session.size),
                }
            ),
        )

    def _delete(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        self.upload_host_requests.append(request)
        session = self.sessions.pop(self._sid(request), None)
        return (204 if session else 404), {}, ""


@pytest.fixture
def server(rsps: responses.RequestsMock) -> FakeUploadServer:
    """A fake OneDrive Personal upload endpoint."""
    return FakeUploadServer(rsps)
