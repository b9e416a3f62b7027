"""Contract tests for the Graph drive API: auth, items, names, paging, delta, faults."""

from __future__ import annotations

import base64
import time

import pytest
import requests
from quickxorhash import quickxorhash

from .conftest import ALEX, MEGAN, Env

pytestmark = pytest.mark.emulator


def qxh(data: bytes) -> str:
    h = quickxorhash()
    h.update(data)
    return base64.b64encode(h.digest()).decode()


def put(http: requests.Session, env: Env, path: str, data: bytes, conflict: str | None = None):
    params = {"@microsoft.graph.conflictBehavior": conflict} if conflict else None
    return http.put(
        f"{env.graph}/me/drive/root:/{path}:/content", data=data, params=params, timeout=5
    )


def assert_graph_error(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert {"date", "request-id", "client-request-id"} <= error["innerError"].keys()
    assert resp.headers["request-id"]
    return error


def test_bearer_required(env: Env) -> None:
    resp = requests.get(f"{env.graph}/me/drive", timeout=5)
    assert_graph_error(resp, 401, "InvalidAuthenticationToken")
    assert "WWW-Authenticate" in resp.headers
    resp = requests.get(
        f"{env.graph}/me/drive", headers={"Authorization": "Bearer junk"}, timeout=5
    )
    assert_graph_error(resp, 401, "InvalidAuthenticationToken")


def test_expired_access_token(env: Env, http: requests.Session) -> None:
    assert http.get(f"{env.graph}/me", timeout=5).status_code == 200
    env.admin.expire_access_tokens(0)
    resp = http.get(f"{env.graph}/me", timeout=5)
    assert "expired" in assert_graph_error(resp, 401, "InvalidAuthenticationToken")["message"]
    assert env.token()["expires_in"] == 0


def test_me_and_drive_with_quota(env: Env, http: requests.Session) -> None:
    me = http.get(f"{env.graph}/me", timeout=5).json()
    assert me["displayName"] == "Alex Wilber"
    drive = http.get(f"{env.graph}/me/drive", timeout=5).json()
    assert drive["driveType"] == "personal"
    assert drive["quota"]["used"] == 0 and drive["quota"]["state"] == "normal"
    same = http.get(f"{env.graph}/drives/{drive['id']}", timeout=5).json()
    assert same["id"] == drive["id"]
    root = http.get(f"{env.graph}/drives/{drive['id']}/root", timeout=5).json()
    assert "root" in root and root["folder"]["childCount"] == 0
    business = env.session(MEGAN).get(f"{env.graph}/me/drive", timeout=5).json()
    assert business["driveType"] == "business"
    other = http.get(f"{env.graph}/drives/{business['id']}/root", timeout=5)
    assert_graph_error(other, 404, "itemNotFound")


def test_simple_upload_fields_and_hash(env: Env, http: requests.Session) -> None:
    data = b"hello onedrive" * 1000
    resp = put(http, env, "Docs/notes.txt", data)
    assert resp.status_code == 201
    item = resp.json()
    for key in (
        "id",
        "name",
        "size",
        "eTag",
        "cTag",
        "createdDateTime",
        "lastModifiedDateTime",
        "parentReference",
        "file",
        "webUrl",
        "@microsoft.graph.downloadUrl",
    ):
        assert key in item
    assert item["size"] == len(data)
    assert item["file"]["hashes"]["quickXorHash"] == qxh(data)
    assert item["file"]["mimeType"] == "text/plain"
    assert item["parentReference"]["path"] == "/drive/root:/Docs"
    again = put(http, env, "Docs/notes.txt", b"changed")
    assert again.status_code == 200
    assert again.json()["id"] == item["id"]
    assert again.json()["eTag"] != item["eTag"] and again.json()["cTag"] != item["cTag"]
    by_id = http.put(f"{env.graph}/me/drive/items/{item['id']}/content", data=b"v3", timeout=5)
    assert by_id.status_code == 200 and by_id.json()["size"] == 2
    parent_id = item["parentReference"]["id"]
    by_parent = http.put(
        f"{env.graph}/me/drive/items/{parent_id}:/other.bin:/content", data=b"x", timeout=5
    )
    assert by_parent.status_code == 201


def test_zero_byte_simple_upload(env: Env, http: requests.Session) -> None:
    item = put(http, env, "empty.txt", b"").json()
    assert item["size"] == 0 and item["file"]["hashes"]["quickXorHash"] == qxh(b"")


def test_conflict_behaviours_on_simple_upload(env: Env, http: requests.Session) -> None:
    put(http, env, "report.txt", b"one")
    assert_graph_error(put(http, env, "report.txt", b"two", "fail"), 409, "nameAlreadyExists")
    renamed = put(http, env, "report.txt", b"two", "rename")
    assert renamed.status_code == 201 and renamed.json()["name"] == "report 1.txt"
    assert put(http, env, "report.txt", b"3", "rename").json()["name"] == "report 2.txt"
    assert put(http, env, "REPORT.TXT", b"three", "replace").status_code == 200
    assert_graph_error(put(http, env, "report.txt", b"x", "bogus"), 400, "invalidRequest")


def test_simple_upload_over_250mb_refused_before_reading(env: Env) -> None:
    token = env.token()["access_token"]
    conn = env.connection()
    conn.putrequest("PUT", "/v1.0/me/drive/root:/huge.bin:/content")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(250 * 1024 * 1024 + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    conn.close()


@pytest.mark.parametrize(
    "name",
    [
        'a"b',
        "a*b",
        "a:b",
        "a<b",
        "a>b",
        "a?b",
        "a\\b",
        "a|b",
        " lead",
        "trail ",
        "dot.",
        ".lock",
        "CON",
        "prn",
        "aux",
        "NUL",
        "COM1",
        "lpt9",
        "x_vti_y",
        "desktop.ini",
        "~$doc.docx",
    ],
)
def test_invalid_names_refused(env: Env, http: requests.Session, name: str) -> None:
    resp = http.post(
        f"{env.graph}/me/drive/root/children", timeout=5, json={"name": name, "folder": {}}
    )
    assert_graph_error(resp, 400, "invalidRequest")


def test_path_over_400_characters_refused(env: Env, http: requests.Session) -> None:
    long_path = "/".join(["d" * 99] * 4) + "/file.txt"
    assert_graph_error(put(http, env, long_path, b"x"), 400, "invalidRequest")
    assert put(http, env, "/".join(["d" * 99] * 4), b"x").status_code == 201


def test_folder_creation_conflicts(env: Env, http: requests.Session) -> None:
    url = f"{env.graph}/me/drive/root/children"
    first = http.post(
        url,
        json={"name": "Photos", "folder": {}, "@microsoft.graph.conflictBehavior": "fail"},
        timeout=5,
    )
    assert first.status_code == 201
    again = http.post(
        url,
        json={"name": "photos", "folder": {}, "@microsoft.graph.conflictBehavior": "fail"},
        timeout=5,
    )
    assert_graph_error(again, 409, "nameAlreadyExists")
    renamed = http.post(
        url,
        json={"name": "Photos", "folder": {}, "@microsoft.graph.conflictBehavior": "rename"},
        timeout=5,
    )
    assert renamed.json()["name"] == "Photos 1"


def test_paging_with_next_link(env: Env, http: requests.Session) -> None:
    for i in range(7):
        put(http, env, f"f{i}.txt", b"x")
    url: str | None = f"{env.graph}/me/drive/root/children?$top=3"
    names, pages = [], 0
    while url:
        body = http.get(url, timeout=5).json()
        names += [v["name"] for v in body["value"]]
        url = body.get("@odata.nextLink")
        assert url is None or url.startswith(f"{env.graph}/")
        pages += 1
    assert pages == 3 and names == [f"f{i}.txt" for i in range(7)]
    bad = http.get(f"{env.graph}/me/drive/root/children?$top=0", timeout=5)
    assert_graph_error(bad, 400, "invalidRequest")


def test_delta_reports_changes_and_deletions(env: Env, http: requests.Session) -> None:
    put(http, env, "a.txt", b"a")
    first = http.get(f"{env.graph}/me/drive/root/delta", timeout=5).json()
    assert {"root", "a.txt"} <= {v["name"] for v in first["value"]}
    delta_link = first["@odata.deltaLink"]
    item = put(http, env, "b.txt", b"b").json()
    http.delete(f"{env.graph}/me/drive/items/{item['id']}", timeout=5)
    put(http, env, "a.txt", b"aa")
    second = http.get(delta_link, timeout=5).json()
    by_name = {v["name"]: v for v in second["value"]}
    assert "deleted" in by_name["b.txt"] and "file" in by_name["a.txt"]
    assert http.get(second["@odata.deltaLink"], timeout=5).json()["value"] == []
    latest = http.get(f"{env.graph}/me/drive/root/delta(token='latest')", timeout=5).json()
    assert latest["value"] == [] and "@odata.deltaLink" in latest


def test_approot_created_on_demand(env: Env, http: requests.Session) -> None:
    approot = http.get(f"{env.graph}/me/drive/special/approot", timeout=5).json()
    assert approot["specialFolder"] == {"name": "approot"}
    assert approot["parentReference"]["path"] == "/drive/root:/Apps"
    item = http.put(
        f"{env.graph}/me/drive/special/approot:/backup.zip:/content", data=b"z", timeout=5
    ).json()
    assert item["parentReference"]["id"] == approot["id"]


def test_download_redirects_to_preauthenticated_url(env: Env, http: requests.Session) -> None:
    data = bytes(range(256)) * 40
    item = put(http, env, "bin/data.bin", data).json()
    resp = http.get(
        f"{env.graph}/me/drive/items/{item['id']}/content", allow_redirects=False, timeout=5
    )
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert requests.get(location, timeout=5).content == data
    partial = requests.get(location, headers={"Range": "bytes=10-19"}, timeout=5)
    assert partial.status_code == 206 and partial.content == data[10:20]
    by_path = http.get(f"{env.graph}/me/drive/root:/bin/data.bin:/content", timeout=5)
    assert by_path.content == data
    assert requests.get(location + "x", timeout=5).status_code == 401


def test_get_and_delete(env: Env, http: requests.Session) -> None:
    item = put(http, env, "gone.txt", b"bye").json()
    got = http.get(f"{env.graph}/me/drive/root:/gone.txt", timeout=5).json()
    assert got["id"] == item["id"]
    assert http.delete(f"{env.graph}/me/drive/items/{item['id']}", timeout=5).status_code == 204
    assert_graph_error(
        http.get(f"{env.graph}/me/drive/items/{item['id']}", timeout=5), 404, "itemNotFound"
    )


def test_if_match_detects_server_side_change(env: Env, http: requests.Session) -> None:
    item = put(http, env, "shared.txt", b"mine").json()
    changed = env.admin.modify_item(ALEX, "shared.txt", b"theirs")
    assert changed["eTag"] != item["eTag"] and changed["cTag"] != item["cTag"]
    assert changed["quickXorHash"] == qxh(b"theirs")
    resp = http.put(
        f"{env.graph}/me/drive/items/{item['id']}/content",
        data=b"mine v2",
        headers={"If-Match": item["eTag"]},
        timeout=5,
    )
    assert_graph_error(resp, 412, "resourceModified")


def test_quota_exceeded_507(env: Env, http: requests.Session) -> None:
    env.admin.quota_exceeded(ALEX)
    assert_graph_error(put(http, env, "q.txt", b"x"), 507, "quotaLimitReached")
    env.admin.quota_exceeded(ALEX, on=False)
    assert put(http, env, "q.txt", b"x").status_code == 201


def test_real_quota_limit(env: Env) -> None:
    env.admin.add_account("tiny@example.org", "Tiny", quota_total=10)
    s = env.session("tiny@example.org")
    assert put(s, env, "a.txt", b"12345").status_code == 201
    assert_graph_error(put(s, env, "b.txt", b"123456"), 507, "quotaLimitReached")


def test_throttling_with_retry_after(env: Env, http: requests.Session) -> None:
    env.admin.throttle(count=2, retry_after=7)
    for _ in range(2):
        resp = http.get(f"{env.graph}/me/drive", timeout=5)
        assert_graph_error(resp, 429, "activityLimitReached")
        assert resp.headers["Retry-After"] == "7"
    assert http.get(f"{env.graph}/me/drive", timeout=5).status_code == 200
    env.admin.throttle(every=3)
    statuses = [http.get(f"{env.graph}/me", timeout=5).status_code for _ in range(6)]
    assert statuses.count(429) == 2
    env.admin.clear_faults()
    assert all(http.get(f"{env.graph}/me", timeout=5).ok for _ in range(4))


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_bursts(env: Env, http: requests.Session, status: int) -> None:
    env.admin.fail(status, 2)
    first = http.get(f"{env.graph}/me/drive", timeout=5)
    assert first.status_code == status
    assert ("Retry-After" in first.headers) == (status == 503)
    assert http.get(f"{env.graph}/me/drive", timeout=5).status_code == status
    assert http.get(f"{env.graph}/me/drive", timeout=5).status_code == 200


def test_requests_log(env: Env, http: requests.Session) -> None:
    http.get(f"{env.graph}/me", timeout=5)
    log = env.admin.requests_log()
    assert log[-1]["path"] == "/v1.0/me" and log[-1]["had_authorization_header"] is True
    assert log[-1]["status"] == 200


def test_production_refused(monkeypatch) -> None:
    from onedrive_emulator import ProductionRefused, create_emulator_app

    monkeypatch.setenv("DRIVESYNC_ENV", "production")
    with pytest.raises(ProductionRefused):
        create_emulator_app()


def test_access_token_expires_after_n_seconds(env: Env) -> None:
    env.admin.expire_access_tokens(1)
    s = env.session()
    time.sleep(1.1)
    assert s.get(f"{env.graph}/me", timeout=5).status_code == 401
