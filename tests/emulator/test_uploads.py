"""Contract tests for resumable upload sessions and their fault injection."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest
import requests

from .conftest import ALEX, MEGAN, Env
from .test_graph import assert_graph_error, put, qxh

pytestmark = pytest.mark.emulator

UNIT = 327_680


def create(http: requests.Session, env: Env, path: str, conflict: str = "fail", **item) -> str:
    resp = http.post(
        f"{env.graph}/me/drive/root:/{path}:/createUploadSession",
        timeout=5,
        json={"item": {"@microsoft.graph.conflictBehavior": conflict, **item}},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["nextExpectedRanges"] == ["0-"] and body["expirationDateTime"]
    assert body["uploadUrl"].startswith(env.url + "/_upload/")
    return body["uploadUrl"]


def send(url: str, data: bytes, start: int, total: int, **headers: str) -> requests.Response:
    end = start + len(data) - 1
    return requests.put(
        url,
        data=data,
        timeout=10,
        headers={"Content-Range": f"bytes {start}-{end}/{total}", **headers},
    )


def test_multi_fragment_upload_personal(env: Env, http: requests.Session) -> None:
    data = os.urandom(UNIT * 3 + 1000)
    url = create(http, env, "big/file.bin")
    first = send(url, data[: UNIT * 2], 0, len(data))
    assert first.status_code == 202
    assert first.json()["nextExpectedRanges"] == [f"{UNIT * 2}-"]
    last = send(url, data[UNIT * 2 :], UNIT * 2, len(data))
    assert last.status_code == 201
    item = last.json()
    assert item["size"] == len(data) and item["file"]["hashes"]["quickXorHash"] == qxh(data)
    assert http.get(f"{env.graph}/me/drive/items/{item['id']}/content", timeout=5).content == data


def test_business_ranges_are_n_to_m(env: Env) -> None:
    s = env.session(MEGAN)
    data = os.urandom(UNIT + 10)
    url = create(s, env, "b.bin")
    resp = send(url, data[:UNIT], 0, len(data))
    assert resp.json()["nextExpectedRanges"] == [f"{UNIT}-{len(data) - 1}"]
    assert requests.get(url, timeout=5).json()["nextExpectedRanges"] == [f"{UNIT}-{len(data) - 1}"]
    assert send(url, data[UNIT:], UNIT, len(data)).status_code == 201


def test_replace_existing_gives_200(env: Env, http: requests.Session) -> None:
    put(http, env, "r.bin", b"old")
    url = create(http, env, "r.bin", "replace")
    assert send(url, b"new!", 0, 4).status_code == 200


def test_bearer_token_to_upload_url_refused(env: Env, http: requests.Session) -> None:
    url = create(http, env, "a.bin")
    resp = send(url, b"abc", 0, 3, Authorization=http.headers["Authorization"])
    assert_graph_error(resp, 401, "unauthenticated")
    assert requests.get(url, headers={"Authorization": "Bearer x"}, timeout=5).status_code == 401
    assert send(url, b"abc", 0, 3).status_code == 201
    log = [e for e in env.admin.requests_log() if e["path"].startswith("/_upload/")]
    assert [e["had_authorization_header"] for e in log] == [True, True, False]


def test_fragment_not_multiple_of_320k_refused(env: Env, http: requests.Session) -> None:
    url = create(http, env, "a.bin")
    total = UNIT * 3
    resp = send(url, os.urandom(UNIT + 1), 0, total)
    assert_graph_error(resp, 400, "invalidRequest")
    assert requests.get(url, timeout=5).json()["nextExpectedRanges"] == ["0-"]


def test_overlapping_and_out_of_order_fragments_416(env: Env, http: requests.Session) -> None:
    data = os.urandom(UNIT * 3)
    url = create(http, env, "a.bin")
    assert send(url, data[:UNIT], 0, len(data)).status_code == 202
    error = assert_graph_error(send(url, data[:UNIT], 0, len(data)), 416, "invalidRange")
    assert error["innerError"]["code"] == "fragmentOverlap"
    error = assert_graph_error(
        send(url, data[UNIT * 2 :], UNIT * 2, len(data)), 416, "invalidRange"
    )
    assert error["innerError"]["code"] == "fragmentOutOfOrder"


def test_header_rules(env: Env, http: requests.Session) -> None:
    url = create(http, env, "a.bin")
    no_range = requests.put(url, data=b"abc", timeout=5)
    assert_graph_error(no_range, 400, "invalidRequest")
    chunked = requests.put(
        url, data=iter([b"abc"]), timeout=5, headers={"Content-Range": "bytes 0-2/3"}
    )
    assert chunked.status_code == 411
    assert send(url, os.urandom(UNIT), 0, UNIT * 2).status_code == 202
    mismatch = send(url, os.urandom(UNIT), UNIT, UNIT * 5)
    assert assert_graph_error(mismatch, 400, "invalidRequest")["innerError"]["code"] == (
        "fragmentLengthMismatch"
    )


def test_fragment_over_60_mib_refused(env: Env, http: requests.Session) -> None:
    url = urlsplit(create(http, env, "huge.bin"))
    size = 60 * 1024 * 1024 + UNIT
    conn = env.connection()
    conn.putrequest("PUT", url.path)
    conn.putheader("Content-Length", str(size))
    conn.putheader("Content-Range", f"bytes 0-{size - 1}/{size * 2}")
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


def test_resume_via_get_status(env: Env, http: requests.Session) -> None:
    data = os.urandom(UNIT * 2 + 7)
    url = create(http, env, "resume.bin")
    send(url, data[:UNIT], 0, len(data))
    status = requests.get(url, timeout=5).json()
    start = int(status["nextExpectedRanges"][0].split("-")[0])
    assert start == UNIT
    assert send(url, data[start : start + UNIT], start, len(data)).status_code == 202
    assert send(url, data[UNIT * 2 :], UNIT * 2, len(data)).status_code == 201


def test_lose_response_then_retry_meets_416_and_get_tells_truth(
    env: Env, http: requests.Session
) -> None:
    data = os.urandom(UNIT * 2 + 3)
    url = create(http, env, "lost.bin")
    env.admin.lose_response()
    with pytest.raises(requests.ConnectionError):
        send(url, data[:UNIT], 0, len(data))
    assert_graph_error(send(url, data[:UNIT], 0, len(data)), 416, "invalidRange")
    assert requests.get(url, timeout=5).json()["nextExpectedRanges"] == [f"{UNIT}-"]
    assert send(url, data[UNIT : UNIT * 2], UNIT, len(data)).status_code == 202
    done = send(url, data[UNIT * 2 :], UNIT * 2, len(data))
    assert done.json()["file"]["hashes"]["quickXorHash"] == qxh(data)


def test_drop_connection_mid_fragment_keeps_nothing(env: Env, http: requests.Session) -> None:
    data = os.urandom(UNIT * 8)
    url = create(http, env, "dropped.bin")
    env.admin.drop_connection()
    with pytest.raises(requests.ConnectionError):
        send(url, data[: UNIT * 4], 0, len(data))
    assert requests.get(url, timeout=5).json()["nextExpectedRanges"] == ["0-"]
    assert send(url, data[: UNIT * 4], 0, len(data)).status_code == 202
    assert send(url, data[UNIT * 4 :], UNIT * 4, len(data)).status_code == 201
    assert any(e["dropped"] for e in env.admin.requests_log())


def test_expired_session_404(env: Env, http: requests.Session) -> None:
    url = create(http, env, "exp.bin")
    env.admin.expire_upload_sessions()
    assert_graph_error(send(url, b"abc", 0, 3), 404, "itemNotFound")
    assert_graph_error(requests.get(url, timeout=5), 404, "itemNotFound")


def test_cancel_with_delete(env: Env, http: requests.Session) -> None:
    url = create(http, env, "cancel.bin")
    assert requests.delete(url, timeout=5).status_code == 204
    assert requests.get(url, timeout=5).status_code == 404


def test_quota_exceeded_507(env: Env, http: requests.Session) -> None:
    env.admin.quota_exceeded(ALEX)
    resp = http.post(f"{env.graph}/me/drive/root:/q.bin:/createUploadSession", json={}, timeout=5)
    assert_graph_error(resp, 507, "quotaLimitReached")
    env.admin.quota_exceeded(ALEX, on=False)
    url = create(http, env, "q.bin")
    env.admin.quota_exceeded(ALEX)
    assert_graph_error(send(url, b"abc", 0, 3), 507, "quotaLimitReached")


def test_conflict_fail_at_creation_and_at_commit(env: Env, http: requests.Session) -> None:
    put(http, env, "taken.bin", b"x")
    resp = http.post(
        f"{env.graph}/me/drive/root:/taken.bin:/createUploadSession",
        timeout=5,
        json={"item": {"@microsoft.graph.conflictBehavior": "fail"}},
    )
    assert_graph_error(resp, 409, "nameAlreadyExists")
    url = create(http, env, "later.bin", "fail")
    put(http, env, "later.bin", b"someone else")
    assert_graph_error(send(url, b"mine", 0, 4), 409, "nameAlreadyExists")


def test_rename_at_commit(env: Env, http: requests.Session) -> None:
    url = create(http, env, "dup.txt", "rename")
    put(http, env, "dup.txt", b"first")
    resp = send(url, b"second", 0, 6)
    assert resp.status_code == 201 and resp.json()["name"] == "dup 1.txt"


def test_item_name_must_match_path(env: Env, http: requests.Session) -> None:
    resp = http.post(
        f"{env.graph}/me/drive/root:/a.bin:/createUploadSession",
        timeout=5,
        json={"item": {"name": "b.bin"}},
    )
    assert_graph_error(resp, 400, "invalidRequest")


def test_session_by_parent_id_and_update_by_item_id(env: Env, http: requests.Session) -> None:
    root = http.get(f"{env.graph}/me/drive/root", timeout=5).json()
    resp = http.post(
        f"{env.graph}/me/drive/items/{root['id']}:/p.bin:/createUploadSession", json={}, timeout=5
    )
    created = send(resp.json()["uploadUrl"], b"one", 0, 3).json()
    resp = http.post(
        f"{env.graph}/me/drive/items/{created['id']}/createUploadSession", json={}, timeout=5
    )
    updated = send(resp.json()["uploadUrl"], b"two!", 0, 4)
    assert updated.status_code == 200 and updated.json()["id"] == created["id"]


def test_fault_injection_applies_to_fragments(env: Env, http: requests.Session) -> None:
    url = create(http, env, "f.bin")
    env.admin.fail(503, 1, retry_after=2)
    resp = send(url, b"abc", 0, 3)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "2"
    assert send(url, b"abc", 0, 3).status_code == 201


@pytest.mark.slow
def test_large_upload_60_mib_fragments(env: Env, http: requests.Session) -> None:
    size = 130 * 1024 * 1024 + 5
    chunk = 60 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    data = (block * (size // len(block) + 1))[:size]
    url = create(http, env, "large.bin")
    start = 0
    while start < size:
        resp = send(url, data[start : start + chunk], start, size)
        start += chunk
    assert resp.status_code == 201
    assert resp.json()["file"]["hashes"]["quickXorHash"] == qxh(data)
