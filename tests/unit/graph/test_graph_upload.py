"""Uploads: simple PUT, upload sessions, resume, restarts and hash verification."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
import responses

from drivesync.graph import upload as upload_mod
from drivesync.graph.client import GraphClient
from drivesync.graph.errors import GraphError, IntegrityError, NameNotAllowedError
from drivesync.graph.quickxor import QuickXorHash
from drivesync.graph.upload import (
    FRAGMENT_MULTIPLE,
    ResumeState,
    cancel_session,
    parse_next_expected,
    upload_file,
    validate_fragment_size,
)

from .conftest import UPLOAD_HOST, FakeUploadServer

FRAG = 2 * FRAGMENT_MULTIPLE  # 640 KiB keeps the tests fast while exercising many fragments


def make_file(tmp_path: Path, size: int, name: str = "data.bin") -> Path:
    """Write ``size`` pseudo-random bytes to a file and return its path."""
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def fragment_lengths(server: FakeUploadServer) -> list[int]:
    """Return the body length of every fragment PUT, in order."""
    return [length for _sid, _range, length in server.puts]


def assert_no_bearer_to_upload_host(server: FakeUploadServer) -> None:
    """Fail if any request to the pre-authenticated host carried an Authorization header."""
    assert server.upload_host_requests, "expected traffic to the upload host"
    for request in server.upload_host_requests:
        assert "Authorization" not in request.headers


def test_zero_byte_file_uses_simple_put(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A zero-byte file goes up with one simple PUT, never an upload session."""
    path = make_file(tmp_path, 0, "empty.txt")
    result = upload_file(client, path, "PARENT", "empty.txt", simple_max=0)
    assert len(server.simple_puts) == 1 and not server.creates
    request = server.simple_puts[0]
    assert "conflictBehavior=fail" in unquote(request.url or "")
    assert request.headers["Authorization"].startswith("Bearer ")
    assert result.hash_matched and result.quick_xor_hash == QuickXorHash().b64digest()


@pytest.mark.parametrize(
    ("size", "simple"),
    [(4 * 1024 * 1024, True), (4 * 1024 * 1024 + 1, False)],
)
def test_four_mib_boundary(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path, size: int, simple: bool
) -> None:
    """Files up to exactly 4 MiB use the simple PUT; one byte more opens a session."""
    path = make_file(tmp_path, size)
    result = upload_file(client, path, "PARENT", "data.bin", conflict_behavior="replace")
    assert bool(server.simple_puts) is simple
    assert bool(server.creates) is not simple
    assert result.hash_matched


def test_session_fragments_and_request_shape(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """Fragments are 320 KiB multiples except the last, and the session body is complete."""
    size = 5 * FRAG + 12345
    path = make_file(tmp_path, size)
    modified = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    progress: list[tuple[int, int]] = []
    sessions: list[tuple[str, datetime | None]] = []
    result = upload_file(
        client,
        path,
        "PARENT",
        "data.bin",
        fragment_size=FRAG,
        simple_max=0,
        modified_at=modified,
        on_progress=lambda done, total: progress.append((done, total)),
        on_session=lambda url, exp: sessions.append((url, exp)),
    )
    lengths = fragment_lengths(server)
    assert lengths == [FRAG] * 5 + [12345]
    assert all(n % FRAGMENT_MULTIPLE == 0 for n in lengths[:-1])
    assert server.creates == [
        {
            "item": {
                "@microsoft.graph.conflictBehavior": "fail",
                "name": "data.bin",
                "fileSystemInfo": {"lastModifiedDateTime": "2024-05-06T07:08:09.000Z"},
            }
        }
    ]
    assert server.create_headers[0]["Authorization"].startswith("Bearer ")
    assert_no_bearer_to_upload_host(server)
    assert progress[-1] == (size, size) and len(progress) == 6
    assert len(sessions) == 1 and sessions[0][1] == datetime(2030, 1, 1, tzinfo=UTC)
    assert server.committed["data.bin"] == path.read_bytes()
    assert result.hash_matched and result.sessions == 1


def test_resume_after_416_asks_the_session(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path, sleeps: list[float]
) -> None:
    """A 416 makes the uploader GET nextExpectedRanges and carry on, without sleeping."""
    path = make_file(tmp_path, 3 * FRAG + 1)
    server.faults = [None, 416]
    result = upload_file(client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0)
    assert server.status_gets == ["s1"]
    assert sleeps == []
    assert server.committed["data.bin"] == path.read_bytes() and result.hash_matched


def test_resume_after_dropped_connection_skips_stored_bytes(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path, sleeps: list[float]
) -> None:
    """When the reply is lost after the server stored a fragment, the upload resumes after it."""
    path = make_file(tmp_path, 4 * FRAG)
    server.faults = [None, "drop-after-store"]
    result = upload_file(client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0)
    starts = [rng.split()[1].split("-")[0] for _s, rng, _n in server.puts]
    assert starts == ["0", str(FRAG), str(2 * FRAG), str(3 * FRAG)]  # nothing re-sent
    assert server.status_gets == ["s1"] and len(sleeps) == 1
    assert result.hash_matched


def test_resume_after_connection_lost_before_store(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A fragment lost on the wire is sent again and hashed only once."""
    path = make_file(tmp_path, 3 * FRAG)
    server.faults = ["drop", "drop"]
    result = upload_file(client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0)
    assert [n for n in fragment_lengths(server)] == [FRAG] * 5
    assert result.hash_matched


def test_5xx_backs_off_then_resumes(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path, sleeps: list[float]
) -> None:
    """A 503 on a fragment waits (pacer), asks the session for its offset, then continues."""
    path = make_file(tmp_path, 2 * FRAG + 7)
    server.faults = [None, 503, 500]
    result = upload_file(client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0)
    assert len(sleeps) == 2 and server.status_gets == ["s1", "s1"]
    assert result.hash_matched


def test_session_404_starts_a_new_session(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """An expired session (404) opens a new one from byte 0, and the hash stays right."""
    path = make_file(tmp_path, 4 * FRAG)
    server.faults = [None, None, "expire"]
    opened: list[str] = []
    result = upload_file(
        client,
        path,
        "PARENT",
        "data.bin",
        fragment_size=FRAG,
        simple_max=0,
        on_session=lambda url, _exp: opened.append(url),
    )
    assert len(server.creates) == 2 and len(opened) == 2 and result.sessions == 2
    assert server.committed["data.bin"] == path.read_bytes()
    assert result.hash_matched


def test_session_restarts_are_bounded(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A session that keeps vanishing gives up after max_sessions, with a retryable error."""
    path = make_file(tmp_path, 2 * FRAG)
    server.faults = ["expire"] * 10
    with pytest.raises(GraphError) as info:
        upload_file(
            client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0, max_sessions=2
        )
    assert info.value.code == "uploadSessionFailed" and info.value.retryable
    assert len(server.creates) == 2


def test_lost_final_reply_is_recognised(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """If the final fragment's reply is lost, the finished item is found by hash, not re-sent."""
    path = make_file(tmp_path, 2 * FRAG)
    server.faults = [None, "drop-after-store"]
    result = upload_file(client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0)
    assert len(server.creates) == 1 and len(server.puts) == 2
    assert result.item["id"] == "ITEM-data.bin" and result.hash_matched


def test_hash_mismatch_raises_integrity_error(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A quickXorHash that differs from ours is an IntegrityError, never a success."""
    path = make_file(tmp_path, 2 * FRAG)
    server.remote_hash_override = QuickXorHash(b"something else").b64digest()
    with pytest.raises(IntegrityError) as info:
        upload_file(client, path, "PARENT", "report.docx", fragment_size=FRAG, simple_max=0)
    assert "checksum" in info.value.human_message()


def test_office_document_on_business_is_service_modified(
    rsps: responses.RequestsMock, client: GraphClient, tmp_path: Path
) -> None:
    """On business drives a rewritten Office document is reported as changed by the service."""
    server = FakeUploadServer(rsps, parent_id="BIZ", drive_type="business", range_form="business")
    server.remote_hash_override = QuickXorHash(b"with sharepoint metadata").b64digest()
    path = make_file(tmp_path, 2 * FRAG, "report.docx")
    result = upload_file(client, path, "BIZ", "report.docx", fragment_size=FRAG, simple_max=0)
    assert result.service_modified and not result.hash_matched
    assert result.remote_hash != result.quick_xor_hash


def test_business_range_form_uploads(
    rsps: responses.RequestsMock, client: GraphClient, tmp_path: Path
) -> None:
    """Business answers "N-M" ranges; the upload follows them to the end."""
    server = FakeUploadServer(rsps, parent_id="BIZ", drive_type="business", range_form="business")
    path = make_file(tmp_path, 3 * FRAG + 99)
    server.faults = [None, 416]
    result = upload_file(client, path, "BIZ", "data.bin", fragment_size=FRAG, simple_max=0)
    assert result.hash_matched and not result.service_modified


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        (["0-"], 0),
        (["12345-"], 12345),  # OneDrive Personal
        (["26-4194303"], 26),  # OneDrive for Business
        (["77-99", "10-20"], 10),  # several gaps: the first one wins
        (["512"], 512),  # Outlook attachment form
        ([], None),
        (None, None),
        (["garbage"], None),
    ],
)
def test_parse_next_expected(ranges: list[str] | None, expected: int | None) -> None:
    """nextExpectedRanges parses in the Personal, Business and Outlook forms."""
    assert parse_next_expected(ranges) == expected


@pytest.mark.parametrize("size", [0, 1, 327_679, 327_681, 60 * 1024 * 1024 + FRAGMENT_MULTIPLE])
def test_fragment_size_validation_rejects(size: int) -> None:
    """Fragment sizes that are not positive multiples of 320 KiB up to 60 MiB are refused."""
    with pytest.raises(ValueError):
        validate_fragment_size(size)


@pytest.mark.parametrize("size", [327_680, 10 * 1024 * 1024, 192 * 327_680])
def test_fragment_size_validation_accepts(size: int) -> None:
    """320 KiB multiples up to 60 MiB (192 x 320 KiB) are accepted."""
    assert validate_fragment_size(size) == size


def test_resume_from_stored_session(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A stored session continues where the server stopped, and the hash covers every byte."""
    path = make_file(tmp_path, 3 * FRAG + 5)
    data = path.read_bytes()
    previous = server.open_session("data.bin", data[: 2 * FRAG])
    state = ResumeState(server.url_for(previous.sid), datetime.now(UTC) + timedelta(hours=1))
    result = upload_file(
        client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0, resume=state
    )
    assert not server.creates
    assert fragment_lengths(server) == [FRAG, 5]
    assert result.hash_matched and server.committed["data.bin"] == data
    assert "SECRET" not in repr(state)


def test_expired_stored_session_starts_fresh(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A stored session past its expiry is not even asked: a new session is opened."""
    path = make_file(tmp_path, 2 * FRAG)
    state = ResumeState(server.url_for("old"), datetime.now(UTC) - timedelta(minutes=1))
    result = upload_file(
        client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0, resume=state
    )
    assert server.status_gets == [] and len(server.creates) == 1 and result.hash_matched


def test_vanished_stored_session_starts_fresh(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A stored session the server no longer knows (404) is replaced by a new one."""
    path = make_file(tmp_path, 2 * FRAG)
    state = ResumeState(server.url_for("unknown"), None)
    result = upload_file(
        client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0, resume=state
    )
    assert server.status_gets == ["unknown"] and len(server.creates) == 1
    assert result.hash_matched


def test_non_retryable_fragment_error_is_raised(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A 400 on a fragment is final and carries no upload URL in its text."""
    path = make_file(tmp_path, 2 * FRAG)
    server.faults = [400]
    with pytest.raises(GraphError) as info:
        upload_file(client, path, "PARENT", "data.bin", fragment_size=FRAG, simple_max=0)
    assert info.value.status == 400 and "SECRET" not in str(info.value)


def test_invalid_name_makes_no_request(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A name OneDrive refuses fails locally, before any request."""
    path = make_file(tmp_path, 10)
    with pytest.raises(NameNotAllowedError):
        upload_file(client, path, "PARENT", "CON.txt")
    assert not server.simple_puts and not server.creates


def test_bad_conflict_behavior_is_refused(client: GraphClient, tmp_path: Path) -> None:
    """Only fail, replace and rename are accepted as conflict behaviours."""
    path = make_file(tmp_path, 10)
    with pytest.raises(ValueError):
        upload_file(client, path, "PARENT", "a.bin", conflict_behavior="overwrite")


def test_file_over_service_maximum_is_refused(
    client: GraphClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files above OneDrive's maximum are refused with a readable message."""
    monkeypatch.setattr(upload_mod, "MAX_FILE_SIZE", 100)
    path = make_file(tmp_path, 101)
    with pytest.raises(GraphError) as info:
        upload_file(client, path, "PARENT", "a.bin")
    assert info.value.code == "fileTooLarge" and "GB" in info.value.human_message()


def test_simple_put_conflict_is_reported(
    rsps: responses.RequestsMock, client: GraphClient, tmp_path: Path
) -> None:
    """A 409 on a first simple PUT (a file that is not ours) is raised, not overwritten."""
    rsps.add(
        responses.PUT,
        "https://graph.microsoft.com/v1.0/me/drive/items/P:/a.txt:/content",
        status=409,
        json={"error": {"code": "nameAlreadyExists", "message": "exists"}},
    )
    path = make_file(tmp_path, 10, "a.txt")
    with pytest.raises(GraphError) as info:
        upload_file(client, path, "P", "a.txt")
    assert info.value.code == "nameAlreadyExists"
    assert "already exists" in info.value.human_message()


def test_missing_remote_hash_is_reread_then_reported(
    rsps: responses.RequestsMock, client: GraphClient, tmp_path: Path
) -> None:
    """Without a hash in the answer the item is re-read once; still none means not matched."""
    item = {"id": "X", "name": "a.txt", "file": {}}
    rsps.add(
        responses.PUT,
        "https://graph.microsoft.com/v1.0/me/drive/items/P:/a.txt:/content",
        json=item,
        status=201,
    )
    rsps.add(responses.GET, "https://graph.microsoft.com/v1.0/me/drive/items/X", json=item)
    path = make_file(tmp_path, 10, "a.txt")
    result = upload_file(client, path, "P", "a.txt")
    assert not result.hash_matched and result.remote_hash is None


def test_cancel_session_sends_no_authorization(rsps: responses.RequestsMock) -> None:
    """Cancelling a session is a DELETE to the upload URL without Authorization."""
    rsps.add(responses.DELETE, f"{UPLOAD_HOST}/up/s9", status=204)
    cancel_session(f"{UPLOAD_HOST}/up/s9?tempauth=SECRET")
    assert "Authorization" not in rsps.calls[0].request.headers


def test_upload_result_repr_hides_item(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """UploadResult's repr leaves out the item (it may hold a pre-authenticated URL)."""
    path = make_file(tmp_path, 3)
    result = upload_file(client, path, "PARENT", "a.bin")
    assert "item" not in repr(result) and json.dumps(result.item)


def test_lost_simple_put_reply_is_recognised(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A simple PUT whose reply was lost, retried into a 409, is matched by hash and succeeds."""
    path = make_file(tmp_path, 100, "a.bin")
    server.simple_faults = ["drop-after-store"]
    result = upload_file(client, path, "PARENT", "a.bin")
    assert len(server.simple_puts) == 2 and result.hash_matched


def test_simple_put_409_for_a_foreign_file_is_raised(
    client: GraphClient, server: FakeUploadServer, tmp_path: Path
) -> None:
    """A 409 for a file with other content is raised as a conflict, never overwritten."""
    server.committed["a.bin"] = b"someone else's file"
    path = make_file(tmp_path, 100, "a.bin")
    server.simple_faults = ["drop-after-store"]
    with pytest.raises(GraphError) as info:
        upload_file(client, path, "PARENT", "a.bin")
    assert info.value.status == 409
