"""GraphClient and upload_file against the local OneDrive emulator over real sockets, faults on."""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from drivesync.graph import oauth
from drivesync.graph.client import GraphClient
from drivesync.graph.errors import GraphError, InsufficientStorageError
from drivesync.graph.quickxor import QuickXorHash
from drivesync.graph.retry import Pacer
from drivesync.graph.upload import UploadResult, upload_file
from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.fixtures_emulator import CALLBACK as REDIRECT_URI
from tests.fixtures_emulator import CLIENT_ID, CLIENT_SECRET

pytestmark = pytest.mark.emulator

ALEX = "alex@contoso.example"  # personal drive
MEGAN = "megan@fabrikam.example"  # business drive
MIB = 1024 * 1024
BIG = 25 * MIB
FRAGMENT = 16 * 327_680  # 5 MiB, a multiple of 320 KiB
PREAUTH_PREFIXES = ("/_upload/", "/_download/")


def qxh(data: bytes) -> str:
    """Return the base64 quickXorHash of ``data``."""
    return QuickXorHash(data).b64digest()


class Sleeper:
    """Pacer sleep that records the waits asked for and sleeps at most 10 ms."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(min(seconds, 0.01))


class Tokens:
    """A token provider backed by the emulator: minted once, refreshed through oauth.refresh."""

    def __init__(self, server: EmulatorServer, admin: EmulatorAdmin, email: str) -> None:
        self.settings = oauth.OAuthSettings(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            authority=server.url,
            redirect_uri=REDIRECT_URI,
        )
        self.token = admin.mint_token(email, CLIENT_ID)
        self.calls: list[bool] = []
        self.http = requests.Session()

    def __call__(self, force_refresh: bool) -> str:
        self.calls.append(force_refresh)
        if force_refresh:
            self.token = oauth.refresh(self.settings, self.token["refresh_token"], self.http)
        return str(self.token["access_token"])


@dataclass
class Harness:
    """One signed-in user's client against the emulator, with the pacer's recorded waits."""

    server: EmulatorServer
    admin: EmulatorAdmin
    email: str
    tmp: Path
    sleeper: Sleeper = field(default_factory=Sleeper)
    _open: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = Tokens(self.server, self.admin, self.email)
        self.client = GraphClient(
            self.tokens,
            base_url=f"{self.server.url}/v1.0",
            pacer=Pacer(sleep=self.sleeper, rand=lambda: 0.5),
            session=requests.Session(),
            timeout=(5, 30),
        )
        self._open += [self.tokens.http, self.client.session, self.client.plain_session]
        self.folder = self.client.ensure_folder("drivesync")["id"]

    def close(self) -> None:
        """Close every HTTP session this harness opened."""
        for thing in self._open:
            thing.close()

    def write(self, name: str, data: bytes) -> Path:
        """Write ``data`` to a local file and return its path."""
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def upload(self, local: Path, name: str, **kwargs: Any) -> UploadResult:
        """Upload ``local`` as ``name`` into the test folder."""
        return upload_file(self.client, local, self.folder, name, **kwargs)

    def stored(self, item_id: str) -> dict[str, Any]:
        """Return the emulator's own listing entry for ``item_id``."""
        found = [i for i in self.admin.list_items(self.email) if i["id"] == item_id]
        assert len(found) == 1, f"{item_id} not listed exactly once"
        return found[0]

    def assert_holds(self, result: UploadResult, data_hash: str, size: int) -> None:
        """Assert the emulator stores ``size`` bytes hashing to ``data_hash`` for this upload."""
        entry = self.stored(result.item["id"])
        assert entry["size"] == size
        assert entry["quickXorHash"] == data_hash == result.quick_xor_hash
        assert result.hash_matched

    def log(self) -> list[dict[str, Any]]:
        """Return the emulator's request log."""
        return self.admin.requests_log()


def assert_no_auth_on_preauthenticated(log: list[dict[str, Any]]) -> None:
    """Assert upload and download URLs never got an Authorization header, and Graph always did."""
    preauth = [e for e in log if e["path"].startswith(PREAUTH_PREFIXES)]
    assert preauth, "expected traffic to pre-authenticated URLs"
    assert not [e for e in preauth if e["had_authorization_header"]]
    graph = [e for e in log if e["path"].startswith("/v1.0/")]
    assert graph and all(e["had_authorization_header"] for e in graph)


def upload_puts(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the fragment PUTs from the request log, in order."""
    return [e for e in log if e["method"] == "PUT" and e["path"].startswith("/_upload/")]


def after_first_fragment(action: Callable[[], None]) -> Callable[[int, int], None]:
    """Return an on_progress callback that runs ``action`` once, after the first fragment."""
    fired = False

    def on_progress(done: int, total: int) -> None:
        nonlocal fired
        if not fired and 0 < done < total:
            fired = True
            action()

    return on_progress


@pytest.fixture
def server(emulator: EmulatorServer) -> EmulatorServer:
    """The session's shared emulator (tests/fixtures_emulator.py)."""
    return emulator


@pytest.fixture
def admin(emu: EmulatorAdmin) -> EmulatorAdmin:
    """Its admin client, on a freshly reset emulator."""
    return emu


def random_file(factory: pytest.TempPathFactory, name: str, size: int) -> tuple[Path, str]:
    """Write ``size`` random bytes to a fresh folder; return the path and its quickXorHash."""
    data = os.urandom(size)
    path = factory.mktemp("data") / name
    path.write_bytes(data)
    return path, qxh(data)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 25 MiB file of random bytes and its quickXorHash, written once."""
    return random_file(tmp_path_factory, "big.bin", BIG)


def _harness(server: EmulatorServer, admin: EmulatorAdmin, email: str, tmp: Path) -> Harness:
    return Harness(server, admin, email, tmp)


@pytest.fixture
def alex(server: EmulatorServer, admin: EmulatorAdmin, tmp_path: Path) -> Iterator[Harness]:
    """A client signed in as Alex (personal drive)."""
    h = _harness(server, admin, ALEX, tmp_path)
    yield h
    h.close()


@pytest.fixture
def megan(server: EmulatorServer, admin: EmulatorAdmin, tmp_path: Path) -> Iterator[Harness]:
    """A client signed in as Megan (business drive)."""
    h = _harness(server, admin, MEGAN, tmp_path)
    yield h
    h.close()


# -- resumable uploads under faults ------------------------------------------------------------


def test_baseline_big_upload_uses_one_session(alex: Harness, big_file: tuple[Path, str]) -> None:
    """Without faults a 25 MiB file goes up in five 5 MiB fragments through one session."""
    path, digest = big_file
    result = alex.upload(path, "plain.bin", fragment_size=FRAGMENT)
    alex.assert_holds(result, digest, BIG)
    assert result.sessions == 1
    log = alex.log()
    assert [e["status"] for e in upload_puts(log)] == [202, 202, 202, 202, 201]
    assert_no_auth_on_preauthenticated(log)
    assert alex.sleeper.waits == []


def test_429_burst_honours_retry_after(alex: Harness, big_file: tuple[Path, str]) -> None:
    """A burst of 429s mid-upload is waited out for at least Retry-After, then the upload ends."""
    path, digest = big_file
    hook = after_first_fragment(lambda: alex.admin.throttle(count=3, retry_after=3))
    result = alex.upload(path, "throttled.bin", fragment_size=FRAGMENT, on_progress=hook)
    alex.assert_holds(result, digest, BIG)
    assert result.sessions == 1
    log = alex.log()
    assert sum(e["status"] == 429 for e in log) == 3
    assert len(alex.sleeper.waits) == 3
    assert all(w >= 3 for w in alex.sleeper.waits)  # the header is a floor, not a hint
    assert_no_auth_on_preauthenticated(log)


def test_503_burst_is_retried(alex: Harness, big_file: tuple[Path, str]) -> None:
    """A burst of 503s mid-upload is retried with backoff and the upload completes."""
    path, digest = big_file
    hook = after_first_fragment(lambda: alex.admin.fail(503, count=3, retry_after=1))
    result = alex.upload(path, "unavailable.bin", fragment_size=FRAGMENT, on_progress=hook)
    alex.assert_holds(result, digest, BIG)
    assert result.sessions == 1
    log = alex.log()
    assert sum(e["status"] == 503 for e in log) == 3
    assert len(alex.sleeper.waits) == 3 and all(w >= 1 for w in alex.sleeper.waits)
    assert_no_auth_on_preauthenticated(log)


def test_dropped_connection_mid_fragment_resumes(alex: Harness, big_file: tuple[Path, str]) -> None:
    """A connection cut mid-fragment makes the uploader ask the session and re-send the fragment."""
    path, digest = big_file
    hook = after_first_fragment(lambda: alex.admin.drop_connection(1))
    result = alex.upload(path, "dropped.bin", fragment_size=FRAGMENT, on_progress=hook)
    alex.assert_holds(result, digest, BIG)
    assert result.sessions == 1
    log = alex.log()
    puts = upload_puts(log)
    assert [e["status"] for e in puts] == [202, 0, 202, 202, 202, 201]
    dropped_at = log.index(puts[1])
    status_gets = [
        e for e in log[dropped_at:] if e["method"] == "GET" and e["path"].startswith("/_upload/")
    ]
    assert status_gets and status_gets[0]["status"] == 200
    assert_no_auth_on_preauthenticated(log)


def test_lost_response_resumes_from_next_expected_ranges(
    alex: Harness, big_file: tuple[Path, str]
) -> None:
    """A fragment stored without an answer is not stored twice: the upload resumes after it."""
    path, digest = big_file
    hook = after_first_fragment(lambda: alex.admin.lose_response(1))
    result = alex.upload(path, "lost.bin", fragment_size=FRAGMENT, on_progress=hook)
    alex.assert_holds(result, digest, BIG)
    assert result.sessions == 1
    log = alex.log()
    statuses = [e["status"] for e in upload_puts(log)]
    assert statuses[:2] == [202, 0]
    # Today the uploader asks the session first (GET -> nextExpectedRanges), so it never meets the
    # 416 a blind re-send would get; either way is correct as long as nothing is stored twice.
    assert set(statuses[2:]) <= {202, 201, 416}
    assert statuses.count(202) + statuses.count(201) == 4  # the lost one was stored too
    lost_at = log.index(upload_puts(log)[1])
    assert any(
        e["method"] == "GET" and e["path"].startswith("/_upload/") and e["status"] == 200
        for e in log[lost_at:]
    )
    assert_no_auth_on_preauthenticated(log)


def test_expired_upload_session_starts_a_new_one(alex: Harness, big_file: tuple[Path, str]) -> None:
    """An upload session that expires mid-upload is replaced by a new one and the file lands."""
    path, digest = big_file
    hook = after_first_fragment(alex.admin.expire_upload_sessions)
    result = alex.upload(path, "expired.bin", fragment_size=FRAGMENT, on_progress=hook)
    alex.assert_holds(result, digest, BIG)
    assert result.sessions == 2
    log = alex.log()
    creates = [e for e in log if e["path"].endswith("/createUploadSession")]
    assert [e["status"] for e in creates] == [200, 200]
    assert [e["status"] for e in upload_puts(log)] == [202, 404, 202, 202, 202, 202, 201]
    assert_no_auth_on_preauthenticated(log)


def test_business_drive_with_closed_ranges(megan: Harness, big_file: tuple[Path, str]) -> None:
    """On a business drive the session answers "N-M" ranges and the upload still completes."""
    path, digest = big_file
    seen: list[str] = []
    http = requests.Session()

    def record(resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        if resp.status_code == 202:
            seen.extend(resp.json().get("nextExpectedRanges", []))

    http.hooks["response"].append(record)
    try:
        result = megan.upload(path, "business.bin", fragment_size=FRAGMENT, upload_session=http)
    finally:
        http.close()
    megan.assert_holds(result, digest, BIG)
    assert result.item["parentReference"]["driveType"] == "business"
    assert seen == [f"{n * FRAGMENT}-{BIG - 1}" for n in range(1, 5)]
    assert all(re.fullmatch(r"\d+-\d+", r) for r in seen)
    assert_no_auth_on_preauthenticated(megan.log())


# -- simple uploads, conflicts, quota ----------------------------------------------------------


def test_zero_byte_file_goes_through_simple_put(alex: Harness) -> None:
    """An empty file is sent with one PUT …/content, never an upload session."""
    result = alex.upload(alex.write("empty.txt", b""), "empty.txt")
    alex.assert_holds(result, qxh(b""), 0)
    assert result.sessions == 0
    log = alex.log()
    assert not [e for e in log if e["path"].endswith("/createUploadSession")]
    puts = [e for e in log if e["method"] == "PUT"]
    assert len(puts) == 1 and puts[0]["path"].endswith("/content") and puts[0]["status"] == 201


@pytest.mark.parametrize("simple_max", [4 * MIB, 0], ids=["simple-put", "upload-session"])
def test_conflict_fail_raises_409_name_already_exists(alex: Harness, simple_max: int) -> None:
    """A second upload with conflictBehavior fail raises GraphError 409 nameAlreadyExists."""
    local = alex.write("dup.txt", b"first version\n")
    first = alex.upload(local, "dup.txt", simple_max=simple_max)
    with pytest.raises(GraphError) as info:
        alex.upload(local, "dup.txt", simple_max=simple_max)
    assert info.value.status == 409
    assert info.value.code == "nameAlreadyExists"
    assert alex.sleeper.waits == []  # a conflict is final: no retry
    alex.assert_holds(first, qxh(b"first version\n"), 14)


def test_conflict_rename_keeps_both(alex: Harness) -> None:
    """conflictBehavior rename stores the second upload beside the first as "report 1.txt"."""
    first = alex.upload(alex.write("a.txt", b"one"), "report.txt")
    second = alex.upload(alex.write("b.txt", b"second"), "report.txt", conflict_behavior="rename")
    assert first.item["name"] == "report.txt"
    assert second.item["name"] == "report 1.txt"
    assert second.item["id"] != first.item["id"]
    alex.assert_holds(first, qxh(b"one"), 3)
    alex.assert_holds(second, qxh(b"second"), 6)


@pytest.mark.parametrize("simple_max", [4 * MIB, 0], ids=["simple-put", "upload-session"])
def test_full_drive_raises_insufficient_storage(alex: Harness, simple_max: int) -> None:
    """A 507 raises InsufficientStorageError at once, with a sentence a user can read."""
    alex.admin.quota_exceeded(ALEX, True)
    with pytest.raises(InsufficientStorageError) as info:
        alex.upload(alex.write("full.bin", b"x" * 1000), "full.bin", simple_max=simple_max)
    err = info.value
    assert err.status == 507 and err.code == "quotaLimitReached" and not err.retryable
    assert err.human_message() == (
        "Your OneDrive is full. Free up space or add storage, then sync again."
    )
    assert alex.sleeper.waits == []
    assert sum(e["status"] == 507 for e in alex.log()) == 1


def test_full_drive_mid_session_raises_insufficient_storage(
    alex: Harness, big_file: tuple[Path, str]
) -> None:
    """A drive that fills up between fragments stops the upload with InsufficientStorageError."""
    path, _digest = big_file
    hook = after_first_fragment(lambda: alex.admin.quota_exceeded(ALEX, True))
    with pytest.raises(InsufficientStorageError):
        alex.upload(path, "filling.bin", fragment_size=FRAGMENT, on_progress=hook)
    assert alex.sleeper.waits == []
    assert [e["status"] for e in upload_puts(alex.log())] == [202, 507]


# -- reads -------------------------------------------------------------------------------------


def test_download_follows_302_without_credentials(alex: Harness) -> None:
    """download() follows the 302 to the pre-authenticated URL and streams the same bytes."""
    data = os.urandom(3 * MIB + 17)
    result = alex.upload(alex.write("down.bin", data), "down.bin")
    alex.admin.clear_requests_log()
    out = io.BytesIO()
    progress: list[tuple[int, int | None]] = []
    written = alex.client.download(
        result.item["id"],
        out,
        chunk_size=256 * 1024,
        on_progress=lambda n, t: progress.append((n, t)),
    )
    assert written == len(data) and out.getvalue() == data
    assert progress[-1] == (len(data), len(data)) and len(progress) > 1
    log = alex.log()
    assert [(e["path"].split("/")[1], e["status"]) for e in log] == [
        ("v1.0", 302),
        ("_download", 200),
    ]
    assert_no_auth_on_preauthenticated(log)


def test_list_children_follows_next_links(alex: Harness) -> None:
    """list_children with top=2 over five files follows @odata.nextLink across three pages."""
    for i in range(5):
        alex.upload(alex.write(f"f{i}.txt", f"file {i}".encode()), f"f{i}.txt")
    alex.admin.clear_requests_log()
    names = [item["name"] for item in alex.client.list_children(alex.folder, top=2)]
    assert sorted(names) == [f"f{i}.txt" for i in range(5)]
    pages = [e for e in alex.log() if e["path"].endswith("/children")]
    assert len(pages) == 3
    assert "%24top=2" in pages[0]["query"] or "$top=2" in pages[0]["query"]
    assert all("skiptoken" in e["query"] for e in pages[1:])


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_expired_access_token_is_refreshed_once(alex: Harness) -> None:
    """An expired access token answers 401; the client forces one refresh and the call succeeds."""
    alex.tokens.calls.clear()
    alex.admin.expire_access_tokens(after_seconds=1)
    time.sleep(1.1)
    me = alex.client.me()
    assert me["userPrincipalName"].casefold() == ALEX or me["mail"].casefold() == ALEX
    assert alex.tokens.calls == [False, True]
    statuses = [e["status"] for e in alex.log() if e["path"] == "/v1.0/me"]
    assert statuses == [401, 200]


# -- every fault over TLS ------------------------------------------------------------------------
#
# Each test injects one fault into a fragmented upload (after the first fragment was
# acknowledged) or into a simple request, and demands what production needs: the file ends on
# OneDrive intact (quickXorHash verified by upload_file and by the emulator's own listing), and
# the uploader never re-sent a byte below the last fragment the server had acknowledged to it.

MID = 20 * MIB  # four 5 MiB fragments
# One simple PUT …/content (simple_max raised to it: Graph takes up to 250 MB that way). Big
# enough that a cut after the emulator's first 64 KiB lands while the client is still sending:
# a smaller body may already sit in the kernel's buffers, and then the cut looks like a lost
# answer instead.
SIMPLE = 8 * MIB


def content_range(entry: dict[str, Any]) -> tuple[int, int]:
    """Return (first, last) byte of a logged fragment PUT."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/\d+", entry["content_range"] or "")
    assert match, f"fragment PUT without a Content-Range: {entry}"
    return int(match.group(1)), int(match.group(2))


def assert_no_resend_below_ack(log: list[dict[str, Any]]) -> None:
    """Assert no fragment PUT started below what the server had acknowledged to the client.

    Acknowledged means an answer the client received: a 2xx to a fragment (up to its last byte)
    or a session status (GET) naming the next expected byte. A cut answer (status 0) is not one.
    """
    acked: dict[str, int] = {}
    for entry in log:
        path = entry["path"]
        if not path.startswith("/_upload/"):
            continue
        if entry["method"] == "PUT":
            first, last = content_range(entry)
            assert first >= acked.get(path, 0), (
                f"bytes {first}-{last} re-sent below the acknowledged {acked[path]}"
            )
            if entry["status"] in (200, 201, 202):
                acked[path] = max(acked.get(path, 0), last + 1)
        elif entry["method"] == "GET" and entry["status"] == 200:
            acked[path] = max(acked.get(path, 0), int(entry["next_expected"]))


def assert_fragments_cover_once(log: list[dict[str, Any]], size: int) -> None:
    """Assert the fragments the last session stored (answered or lost) tile 0..size exactly."""
    puts = upload_puts(log)
    last_session = [e for e in puts if e["path"] == puts[-1]["path"]]
    stored = sorted(
        content_range(e) for e in last_session if 200 <= e["status"] < 300 or e["cut"] == "lose"
    )
    expected = 0
    for first, last in stored:
        assert first == expected, f"gap or overlap at byte {first} (expected {expected})"
        expected = last + 1
    assert expected == size


@pytest.fixture(scope="module")
def mid_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 20 MiB file of random bytes and its quickXorHash, written once."""
    return random_file(tmp_path_factory, "mid.bin", MID)


def fragmented(alex: Harness, mid_file: tuple[Path, str], arm: Callable[[], None]) -> list[Any]:
    """Upload the 20 MiB file, running ``arm`` after the first fragment; check; return the log."""
    path, digest = mid_file
    result = alex.upload(
        path, "faulted.bin", fragment_size=FRAGMENT, on_progress=after_first_fragment(arm)
    )
    alex.assert_holds(result, digest, MID)
    assert result.sessions == 1
    log = alex.log()
    assert_no_resend_below_ack(log)
    assert_no_auth_on_preauthenticated(log)
    return log


def simple(alex: Harness, arm: Callable[[], None]) -> list[Any]:
    """Upload an 8 MiB file with one simple PUT after ``arm``; check it; return the log."""
    data = os.urandom(SIMPLE)
    arm()
    result = alex.upload(alex.write("simple.bin", data), "simple.bin", simple_max=SIMPLE)
    alex.assert_holds(result, qxh(data), SIMPLE)
    assert result.sessions == 0
    return alex.log()


def cuts(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Return the requests the emulator cut with ``kind`` (drop, lose, reset)."""
    return [e for e in log if e["cut"] == kind]


def test_tls_fragment_dropped_mid_body(alex: Harness, mid_file: tuple[Path, str]) -> None:
    """A fragment cut mid-body without close_notify is re-sent from the session's next byte."""
    log = fragmented(alex, mid_file, lambda: alex.admin.drop_connection(1))
    (cut,) = cuts(log, "drop")
    assert content_range(cut)[0] == FRAGMENT  # the second fragment, after one acknowledged
    assert_fragments_cover_once(log, MID)


def test_tls_fragment_response_lost(alex: Harness, mid_file: tuple[Path, str]) -> None:
    """A fragment stored but never answered is not sent again: the upload goes on after it."""
    log = fragmented(alex, mid_file, lambda: alex.admin.lose_response(1))
    (cut,) = cuts(log, "lose")
    assert cut["next_expected"] == 2 * FRAGMENT  # the server stored it
    after = [content_range(e)[0] for e in upload_puts(log)[upload_puts(log).index(cut) + 1 :]]
    assert after and min(after) == 2 * FRAGMENT
    assert_fragments_cover_once(log, MID)


def test_tls_fragment_connection_reset(alex: Harness, mid_file: tuple[Path, str]) -> None:
    """A fragment whose TLS connection is reset (RST) mid-body is re-sent and the file lands."""
    log = fragmented(alex, mid_file, lambda: alex.admin.reset_connection(1))
    (cut,) = cuts(log, "reset")
    assert content_range(cut)[0] == FRAGMENT
    assert_fragments_cover_once(log, MID)


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(503, 2), (503, None), (500, None), (502, None)],
    ids=["503-retry-after", "503-bare", "500", "502"],
)
def test_tls_fragment_5xx_burst(
    alex: Harness, mid_file: tuple[Path, str], status: int, retry_after: int | None
) -> None:
    """Three consecutive 5xx answers mid-upload are retried (Retry-After honoured when sent)."""
    log = fragmented(alex, mid_file, lambda: alex.admin.fail(status, 3, retry_after=retry_after))
    assert sum(e["status"] == status for e in log) == 3
    assert len(alex.sleeper.waits) == 3
    if retry_after is not None:
        assert all(w >= retry_after for w in alex.sleeper.waits)
    assert_fragments_cover_once(log, MID)


def test_tls_fragment_429_storm(alex: Harness, mid_file: tuple[Path, str]) -> None:
    """Four consecutive 429s with Retry-After: 2 are each waited out for at least 2 s."""
    log = fragmented(alex, mid_file, lambda: alex.admin.throttle(count=4, retry_after=2))
    assert sum(e["status"] == 429 for e in log) == 4
    assert len(alex.sleeper.waits) == 4 and all(w >= 2 for w in alex.sleeper.waits)
    assert_fragments_cover_once(log, MID)


def test_tls_simple_put_dropped_mid_body(alex: Harness) -> None:
    """A simple PUT cut mid-body (no close_notify) is sent again and the file lands once."""
    log = simple(alex, lambda: alex.admin.drop_connection(1, target="graph"))
    assert len(cuts(log, "drop")) == 1
    assert [e["status"] for e in log if e["method"] == "PUT"] == [0, 201]


def test_tls_simple_put_response_lost(alex: Harness) -> None:
    """A simple PUT stored without an answer is recognised by its hash, not stored twice."""
    log = simple(alex, lambda: alex.admin.lose_response(1, target="graph"))
    assert len(cuts(log, "lose")) == 1
    assert [e["status"] for e in log if e["method"] == "PUT"][0] == 0
    assert [i["name"] for i in alex.admin.list_items(ALEX) if not i["folder"]] == ["simple.bin"]


def test_tls_simple_put_connection_reset(alex: Harness) -> None:
    """A simple PUT whose connection is reset mid-body is sent again and the file lands."""
    log = simple(alex, lambda: alex.admin.reset_connection(1, target="graph"))
    assert len(cuts(log, "reset")) == 1
    assert [e["status"] for e in log if e["method"] == "PUT"] == [0, 201]


@pytest.mark.parametrize(
    ("status", "retry_after"), [(503, 1), (503, None), (500, None), (502, None), (429, 1)]
)
def test_tls_simple_put_status_bursts(alex: Harness, status: int, retry_after: int | None) -> None:
    """Three 5xx or 429 answers to a simple PUT are retried and the file lands once."""

    def arm() -> None:
        if status == 429:
            alex.admin.throttle(count=3, retry_after=retry_after or 1)
        else:
            alex.admin.fail(status, 3, retry_after=retry_after)

    log = simple(alex, arm)
    assert [e["status"] for e in log if e["method"] == "PUT"] == [status] * 3 + [201]
    assert len(alex.sleeper.waits) == 3


@pytest.mark.parametrize("kind", ["drop", "lose", "reset"])
def test_tls_reads_survive_connection_cuts(alex: Harness, kind: str) -> None:
    """GET /me and a paged listing come back after their connection is cut once each."""
    alex.upload(alex.write("one.txt", b"1"), "one.txt")
    arm = {
        "drop": alex.admin.drop_connection,
        "lose": alex.admin.lose_response,
        "reset": alex.admin.reset_connection,
    }[kind]
    arm(1, target="graph")
    assert alex.client.me()["id"]
    arm(1, target="graph")
    assert [i["name"] for i in alex.client.list_children(alex.folder)] == ["one.txt"]
    assert len(cuts(alex.log(), kind)) == 2
