"""Delta against the emulator, as Microsoft documents it, with changes made "from another device".

Reference: https://learn.microsoft.com/graph/api/driveitem-delta (paging, token=latest, 410 with
Location, latest state per item, no parentReference.path, properties omitted per drive type).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from onedrive_emulator import delta as delta_module
from onedrive_emulator.items import commit_file, ensure_folders

from .conftest import ALEX, MEGAN, Env
from .test_graph import assert_graph_error

pytestmark = pytest.mark.emulator


def drain(http: requests.Session, url: str, **headers: str) -> tuple[list[dict], str, int]:
    """Follow nextLinks to the deltaLink: (every item in order, the deltaLink, pages)."""
    items: list[dict] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        resp = http.get(next_url, headers=headers, timeout=10)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        items += body["value"]
        assert ("@odata.nextLink" in body) != ("@odata.deltaLink" in body)
        next_url = body.get("@odata.nextLink")
        if next_url is None:
            return items, body["@odata.deltaLink"], pages
    raise AssertionError("unreachable")


def by_id(items: list[dict]) -> dict[str, dict]:
    """Last occurrence wins, as the docs tell clients."""
    return {i["id"]: i for i in items}


def entry(env: Env, path: str, email: str = ALEX) -> dict[str, Any]:
    return next(i for i in env.admin.list_items(email) if i["path"] == path)


# ---- changes from another device ------------------------------------------------------------
def test_rename_changes_etag_not_ctag(env: Env) -> None:
    before = env.admin.modify_item(ALEX, "Docs/a.txt", b"a")
    after = env.admin.rename_item(ALEX, "/Docs/a.txt", "b.txt")
    assert after["id"] == before["id"] and after["path"] == "/Docs/b.txt"
    assert after["eTag"] != before["eTag"] and after["cTag"] == before["cTag"]
    assert [i["path"] for i in env.admin.list_items(ALEX)] == ["/Docs", "/Docs/b.txt"]


def test_move_changes_etag_not_ctag_and_needs_an_existing_parent(env: Env) -> None:
    before = env.admin.modify_item(ALEX, "Docs/a.txt", b"a")
    env.admin.modify_item(ALEX, "Other/keep.txt", b"k")
    moved = env.admin.move_item(ALEX, "Docs/a.txt", "/Other")
    assert moved["path"] == "/Other/a.txt" and moved["id"] == before["id"]
    assert moved["eTag"] != before["eTag"] and moved["cTag"] == before["cTag"]
    to_root = env.admin.move_item(ALEX, "/Other/a.txt", "/")
    assert to_root["path"] == "/a.txt"
    with pytest.raises(requests.HTTPError) as missing:
        env.admin.move_item(ALEX, "/a.txt", "/Nowhere")
    assert missing.value.response.status_code == 404
    with pytest.raises(requests.HTTPError) as into_itself:
        env.admin.move_item(ALEX, "/Other", "/Other")
    assert into_itself.value.response.status_code == 400
    env.admin.modify_item(ALEX, "Other/a.txt", b"clash")
    with pytest.raises(requests.HTTPError) as clash:
        env.admin.move_item(ALEX, "/a.txt", "/Other")
    assert clash.value.response.status_code == 409


def test_rename_clash_and_missing_item(env: Env) -> None:
    env.admin.modify_item(ALEX, "a.txt", b"a")
    env.admin.modify_item(ALEX, "b.txt", b"b")
    with pytest.raises(requests.HTTPError) as clash:
        env.admin.rename_item(ALEX, "a.txt", "B.TXT")  # OneDrive names are case-insensitive
    assert clash.value.response.status_code == 409
    with pytest.raises(requests.HTTPError) as bad:
        env.admin.rename_item(ALEX, "a.txt", "a:b.txt")
    assert bad.value.response.status_code == 400
    with pytest.raises(requests.HTTPError) as gone:
        env.admin.rename_item(ALEX, "nope.txt", "c.txt")
    assert gone.value.response.status_code == 404


def test_edit_changes_etag_and_ctag(env: Env) -> None:
    before = env.admin.modify_item(ALEX, "a.txt", b"a")
    after = env.admin.modify_item(ALEX, "a.txt", b"changed")
    assert after["id"] == before["id"]
    assert after["eTag"] != before["eTag"] and after["cTag"] != before["cTag"]


def test_delete_removes_item_and_descendants(env: Env, http: requests.Session) -> None:
    item = env.admin.modify_item(ALEX, "Docs/sub/a.txt", b"a")
    env.admin.delete_item(ALEX, "/Docs")
    assert env.admin.list_items(ALEX) == []
    assert http.get(f"{env.graph}/me/drive/items/{item['id']}", timeout=5).status_code == 404
    with pytest.raises(requests.HTTPError) as again:
        env.admin.delete_item(ALEX, "/Docs")
    assert again.value.response.status_code == 404


# ---- enumeration ----------------------------------------------------------------------------
def test_first_enumeration_pages_and_includes_the_folder(env: Env, http: requests.Session) -> None:
    for i in range(7):
        env.admin.modify_item(ALEX, f"Sync/sub/f{i}.txt", str(i).encode())
    env.admin.modify_item(ALEX, "Sync/gone.txt", b"x")
    env.admin.delete_item(ALEX, "Sync/gone.txt")
    env.admin.modify_item(ALEX, "Elsewhere/x.txt", b"x")
    folder = entry(env, "/Sync")
    items, delta_link, pages = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta?$top=3")
    assert pages == 3  # Sync, sub, 7 files = 9 items in pages of 3
    names = [i["name"] for i in items]
    assert names[:2] == ["Sync", "sub"]  # the folder itself first, parents before children
    assert sorted(names[2:]) == [f"f{i}.txt" for i in range(7)]
    assert items[0]["id"] == folder["id"] and "folder" in items[0]
    assert not any("deleted" in i for i in items)  # a deleted item is not in a first enumeration
    for i in items:
        assert "path" not in i["parentReference"]
        assert i["parentReference"]["driveId"] and "@microsoft.graph.downloadUrl" not in i
    assert all("id" in i["parentReference"] for i in items)
    assert delta_link.startswith(f"{env.graph}/me/drive/root:/Sync:/delta?token=")
    # Nothing changed since: one request, empty.
    assert drain(http, delta_link)[0] == [] and drain(http, delta_link)[2] == 1


def test_delta_addressings(env: Env, http: requests.Session) -> None:
    folder = env.admin.modify_item(ALEX, "Sync/a.txt", b"a")
    sync = entry(env, "/Sync")
    drive_id = http.get(f"{env.graph}/me/drive", timeout=5).json()["id"]
    urls = [
        f"{env.graph}/me/drive/items/{sync['id']}/delta",
        f"{env.graph}/drives/{drive_id}/items/{sync['id']}/delta",
        f"{env.graph}/drives/{drive_id}/items/{sync['id']}/delta()",
        f"{env.graph}/me/drive/root:/Sync:/delta",
    ]
    for url in urls:
        items, link, _ = drain(http, url)
        assert [i["name"] for i in items] == ["Sync", "a.txt"], url
        assert link.split("?")[0] == url.removesuffix("()")
    root_items, _, _ = drain(http, f"{env.graph}/me/drive/root/delta")
    assert [i["name"] for i in root_items] == ["root", "Sync", "a.txt"]
    assert "root" in root_items[0]
    file_delta = http.get(f"{env.graph}/me/drive/items/{folder['id']}/delta", timeout=5)
    assert_graph_error(file_delta, 400, "invalidRequest")


def test_token_latest_is_empty_and_sees_later_changes(env: Env, http: requests.Session) -> None:
    env.admin.modify_item(ALEX, "Sync/old.txt", b"o")
    for url in (
        f"{env.graph}/me/drive/root:/Sync:/delta?token=latest",
        f"{env.graph}/me/drive/root:/Sync:/delta(token='latest')",
    ):
        body = http.get(url, timeout=5).json()
        assert body["value"] == [] and "@odata.nextLink" not in body
    env.admin.modify_item(ALEX, "Sync/new.txt", b"n")
    changes, _, _ = drain(http, body["@odata.deltaLink"])
    assert [i["name"] for i in changes] == ["Sync", "new.txt"]


def test_incremental_edit_rename_move_delete(env: Env, http: requests.Session) -> None:
    for name in ("edit", "rename", "twice", "delete", "moveout", "movewithin", "same"):
        env.admin.modify_item(ALEX, f"Sync/{name}.txt", name.encode())
    env.admin.modify_item(ALEX, "Sync/Sub/keep.txt", b"k")
    env.admin.modify_item(ALEX, "Outside/movein.txt", b"m")
    start = {i["path"]: i for i in env.admin.list_items(ALEX)}
    _, link, _ = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta")
    env.admin.modify_item(ALEX, "Sync/edit.txt", b"edited")
    env.admin.rename_item(ALEX, "Sync/rename.txt", "renamed.txt")
    env.admin.modify_item(ALEX, "Sync/twice.txt", b"1")
    env.admin.rename_item(ALEX, "Sync/twice.txt", "twice2.txt")
    env.admin.modify_item(ALEX, "Sync/twice2.txt", b"22")
    env.admin.delete_item(ALEX, "Sync/delete.txt")
    env.admin.move_item(ALEX, "Sync/moveout.txt", "/Outside")
    env.admin.move_item(ALEX, "Outside/movein.txt", "/Sync")
    env.admin.move_item(ALEX, "Sync/movewithin.txt", "/Sync/Sub")
    env.admin.modify_item(ALEX, "Outside/noise.txt", b"not in scope")
    changes, link2, _ = drain(http, link)
    ids = [c["id"] for c in changes]
    assert len(ids) == len(set(ids))  # one window: each item once, in its latest state
    got = by_id(changes)

    def of(path: str) -> dict:
        return got[start[path]["id"]]

    assert of("/Sync/edit.txt")["size"] == 6 and "deleted" not in of("/Sync/edit.txt")
    assert of("/Sync/rename.txt")["name"] == "renamed.txt"
    assert of("/Sync/twice.txt")["name"] == "twice2.txt" and of("/Sync/twice.txt")["size"] == 2
    assert of("/Sync/delete.txt")["deleted"] == {"state": "deleted"}
    moved_out = of("/Sync/moveout.txt")
    assert "deleted" in moved_out  # out of the scope = deleted to this scope
    assert moved_out["parentReference"]["id"] == start["/Sync"]["id"]
    moved_in = of("/Outside/movein.txt")
    assert "deleted" not in moved_in and moved_in["parentReference"]["id"] == start["/Sync"]["id"]
    assert of("/Sync/movewithin.txt")["parentReference"]["id"] == start["/Sync/Sub"]["id"]
    assert start["/Sync/same.txt"]["id"] not in got
    assert start["/Sync/Sub/keep.txt"]["id"] not in got
    assert start["/Outside"]["id"] not in got
    assert "noise.txt" not in {c.get("name") for c in changes}
    assert ids.index(start["/Sync"]["id"]) == 0  # changed items' parents come along, first
    for c in changes:
        assert "path" not in c["parentReference"]
    assert drain(http, link2)[0] == []


def test_folder_moved_out_and_in_takes_its_descendants(env: Env, http: requests.Session) -> None:
    env.admin.modify_item(ALEX, "Sync/Out/deep/a.txt", b"a")
    env.admin.modify_item(ALEX, "Outside/In/deep/b.txt", b"b")
    start = {i["path"]: i["id"] for i in env.admin.list_items(ALEX)}
    _, link, _ = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta")
    env.admin.move_item(ALEX, "Sync/Out", "/Outside")
    env.admin.move_item(ALEX, "Outside/In", "/Sync")
    changes = by_id(drain(http, link)[0])
    for path in ("/Sync/Out", "/Sync/Out/deep", "/Sync/Out/deep/a.txt"):
        assert "deleted" in changes[start[path]], path
    for path in ("/Outside/In", "/Outside/In/deep", "/Outside/In/deep/b.txt"):
        assert "deleted" not in changes[start[path]], path
    order = list(changes)
    assert order.index(start["/Outside/In"]) < order.index(start["/Outside/In/deep/b.txt"])


def test_rename_of_a_folder_does_not_return_descendants(env: Env, http: requests.Session) -> None:
    env.admin.modify_item(ALEX, "Sync/Folder/a.txt", b"a")
    start = {i["path"]: i["id"] for i in env.admin.list_items(ALEX)}
    _, link, _ = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta")
    env.admin.rename_item(ALEX, "Sync/Folder", "Renamed")
    changes = by_id(drain(http, link)[0])
    assert changes[start["/Sync/Folder"]]["name"] == "Renamed"
    assert start["/Sync/Folder/a.txt"] not in changes


def test_delta_exclude_parent_header(env: Env, http: requests.Session) -> None:
    env.admin.modify_item(ALEX, "Sync/Sub/a.txt", b"a")
    _, link, _ = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta")
    env.admin.modify_item(ALEX, "Sync/Sub/a.txt", b"aa")
    with_parents = [c["name"] for c in drain(http, link)[0]]
    assert with_parents == ["Sync", "Sub", "a.txt"]
    only = [c["name"] for c in drain(http, link, deltaExcludeParent="true")[0]]
    assert only == ["a.txt"]


def test_business_drive_omits_documented_properties(env: Env) -> None:
    http = env.session(MEGAN)
    env.admin.modify_item(MEGAN, "Sync/a.txt", b"a")
    env.admin.modify_item(MEGAN, "Sync/b.txt", b"b")
    items, link, _ = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta")
    assert all("cTag" not in i for i in items) and all("name" in i for i in items)
    env.admin.delete_item(MEGAN, "Sync/b.txt")
    deleted = [c for c in drain(http, link)[0] if "deleted" in c]
    assert len(deleted) == 1 and "name" not in deleted[0] and "cTag" not in deleted[0]
    assert deleted[0]["parentReference"]["id"] == items[0]["id"]
    http.close()


def test_personal_deleted_item_keeps_name_without_size_or_ctag(
    env: Env, http: requests.Session
) -> None:
    env.admin.modify_item(ALEX, "Sync/a.txt", b"a")
    _, link, _ = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta")
    env.admin.delete_item(ALEX, "Sync/a.txt")
    changes = drain(http, link)[0]
    assert [c["name"] for c in changes] == ["Sync", "a.txt"]  # its parent changed too
    assert [c["name"] for c in drain(http, link, deltaExcludeParent="true")[0]] == ["a.txt"]
    (deleted,) = [c for c in changes if "deleted" in c]
    assert deleted["name"] == "a.txt" and "size" not in deleted and "cTag" not in deleted
    assert "file" in deleted


def test_changes_during_paging_are_not_lost(env: Env, http: requests.Session) -> None:
    for i in range(6):
        env.admin.modify_item(ALEX, f"Sync/f{i}.txt", b"x")
    first = http.get(f"{env.graph}/me/drive/root:/Sync:/delta?$top=2", timeout=5).json()
    seen = list(first["value"])
    env.admin.modify_item(ALEX, "Sync/late.txt", b"late")
    env.admin.modify_item(ALEX, "Sync/f0.txt", b"changed while paging")
    rest, link, _ = drain(http, first["@odata.nextLink"])
    seen += rest
    assert "late.txt" not in {i["name"] for i in seen}  # not in this window...
    later = {c["name"]: c for c in drain(http, link)[0]}
    assert "late.txt" in later and later["f0.txt"]["size"] == len(b"changed while paging")


# ---- 410 Gone and invalid tokens ------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "inner"),
    [
        ("resyncChangesApplyDifferences", "resyncChangesApplyDifferences"),
        ("resyncChangesUploadDifferences", "resyncChangesUploadDifferences"),
        ("resyncRequired", None),
    ],
)
def test_armed_410_gone_with_location(
    env: Env, http: requests.Session, code: str, inner: str | None
) -> None:
    env.admin.modify_item(ALEX, "Sync/a.txt", b"a")
    url = f"{env.graph}/me/drive/root:/Sync:/delta"
    _, link, _ = drain(http, url)
    env.admin.delta_gone(code, count=1)
    assert http.get(url, timeout=5).status_code == 200  # no token: not affected
    gone = http.get(link, timeout=5, allow_redirects=False)
    body = assert_graph_error(gone, 410, "resyncRequired")
    assert body["innerError"].get("code") == inner
    location = gone.headers["Location"]
    assert location.startswith(f"{url}?token=")
    items, _, _ = drain(http, location)  # a fresh enumeration from scratch
    assert [i["name"] for i in items] == ["Sync", "a.txt"]
    assert http.get(link, timeout=5).status_code == 200  # count=1: only once


def test_410_counts_and_applies_to_next_links(env: Env, http: requests.Session) -> None:
    for i in range(3):
        env.admin.modify_item(ALEX, f"Sync/f{i}.txt", b"x")
    url = f"{env.graph}/me/drive/root:/Sync:/delta?$top=2"
    first = http.get(url, timeout=5).json()
    env.admin.delta_gone("resyncChangesUploadDifferences", count=2)
    assert http.get(first["@odata.nextLink"], timeout=5).status_code == 410
    assert http.get(first["@odata.nextLink"], timeout=5).status_code == 410
    assert http.get(first["@odata.nextLink"], timeout=5).status_code == 200
    with pytest.raises(requests.HTTPError):
        env.admin.delta_gone("somethingElse")


@pytest.mark.parametrize("token", ["garbage", "ZDEuYWJjLjE", "', '"])
def test_invalid_token_is_410_resync_required(env: Env, http: requests.Session, token: str) -> None:
    url = f"{env.graph}/me/drive/root/delta"
    resp = http.get(url, params={"token": token}, timeout=5, allow_redirects=False)
    assert_graph_error(resp, 410, "resyncRequired")
    assert resp.headers["Location"].startswith(f"{url}?token=")


def test_token_from_before_a_reset_is_refused(env: Env, http: requests.Session) -> None:
    _, link, _ = drain(http, f"{env.graph}/me/drive/root/delta")
    env.admin.reset()
    fresh = env.session()
    assert fresh.get(link, timeout=5, allow_redirects=False).status_code == 410
    fresh.close()


def test_bad_top_is_400(env: Env, http: requests.Session) -> None:
    for top in ("0", "1000", "x"):
        resp = http.get(f"{env.graph}/me/drive/root/delta?$top={top}", timeout=5)
        assert_graph_error(resp, 400, "invalidRequest")


def test_graph_patch_and_delete_with_a_minted_token_show_in_delta(
    env: Env, http: requests.Session
) -> None:
    a = env.admin.modify_item(ALEX, "Sync/a.txt", b"a")
    b = env.admin.modify_item(ALEX, "Sync/b.txt", b"b")
    outside = env.admin.modify_item(ALEX, "Outside/x.txt", b"x")
    _, link, _ = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta")
    parent = entry(env, "/Outside")["id"]
    moved = http.patch(
        f"{env.graph}/me/drive/items/{a['id']}", json={"parentReference": {"id": parent}}, timeout=5
    )
    assert moved.status_code == 200 and moved.json()["cTag"] == a["cTag"]
    assert http.delete(f"{env.graph}/me/drive/items/{b['id']}", timeout=5).status_code == 204
    http.patch(f"{env.graph}/me/drive/items/{outside['id']}", json={"name": "y.txt"}, timeout=5)
    changes = by_id(drain(http, link)[0])
    assert "deleted" in changes[a["id"]] and "deleted" in changes[b["id"]]
    assert outside["id"] not in changes


def _bulk_folder(env: Env, count: int) -> None:
    """Create ``count`` files under /Sync directly in the emulator's state (setup speed only)."""
    state = env.server.state
    with state.lock:
        account = state.account(ALEX)
        assert account is not None
        drive = state.drive_of(account)
        folder = ensure_folders(state, drive, drive.items[drive.root_id], ["Sync"])
        for i in range(count):
            tmp = state.tmp_path()
            with open(tmp, "wb") as fh:
                fh.write(b"x")
            commit_file(state, account, drive, folder, f"f{i:05}.txt", "fail", tmp, 1, "AQ==")


@pytest.mark.slow
def test_ten_thousand_items_enumerate_once_per_window(
    env: Env, http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    _bulk_folder(env, 10_000)
    computed = []
    original = delta_module.compute

    def counting(*args: Any, **kwargs: Any) -> Any:
        computed.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(delta_module, "compute", counting)
    started = time.monotonic()
    items, link, pages = drain(http, f"{env.graph}/me/drive/root:/Sync:/delta")
    elapsed = time.monotonic() - started
    assert pages == 51 and len(items) == 10_001 and len(by_id(items)) == 10_001
    assert computed == [1]  # the window is computed once, not once per page
    assert elapsed < 30, elapsed
    env.admin.modify_item(ALEX, "Sync/f04242.txt", b"one change")
    changes, _, pages = drain(http, link)
    assert pages == 1 and [c["name"] for c in changes] == ["Sync", "f04242.txt"]


def test_approot_delta_and_a_page_token_of_another_folder(env: Env, http: requests.Session) -> None:
    uploaded = http.put(
        f"{env.graph}/me/drive/special/approot:/a.txt:/content", data=b"a", timeout=5
    ).json()
    items, link, _ = drain(http, f"{env.graph}/me/drive/special/approot/delta")
    assert [i["id"] for i in items][1:] == [uploaded["id"]]
    assert link.startswith(f"{env.graph}/me/drive/special/approot/delta?token=")
    for i in range(3):
        env.admin.modify_item(ALEX, f"Sync/f{i}.txt", b"x")
    page = http.get(f"{env.graph}/me/drive/root:/Sync:/delta?$top=1", timeout=5).json()
    token = page["@odata.nextLink"].split("token=")[1]
    other = http.get(f"{env.graph}/me/drive/root/delta?token={token}", timeout=5)
    assert_graph_error(other, 410, "resyncRequired")
