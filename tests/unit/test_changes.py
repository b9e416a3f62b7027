"""Delta change detection: the transition table, the check (staging, apply, 410, failures),
link validation and the file actions. HTTP is mocked with ``responses``; the database is real
(SQLite, or PostgreSQL under row-level security when configured)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import responses
from flask import Flask

from drivesync.extensions import db
from drivesync.graph.delta import RESYNC_APPLY, RESYNC_UPLOAD, is_delta_link
from drivesync.models import File, FileEvent, Integration, RemoteItem, RemoteItemChange, utcnow
from drivesync.scope import user_scope
from drivesync.services import autosync, changes, integrations, scheduler, sync
from drivesync.services.changes import DELETED, EDITED, MOVED, SAME, Decision, decide
from drivesync.services.errors import Conflict, NotFound

GRAPH = "https://graph.microsoft.com/v1.0"
FOLDER = "F"
START = f"{GRAPH}/me/drive/items/{FOLDER}/delta"
LINK1 = f"{START}?token=t1"
LINK2 = f"{START}?token=t2"


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """A configured (fake) Microsoft app; no request leaves the process."""
    return {"MS_CLIENT_ID": "client", "MS_CLIENT_SECRET": "secret"}


@pytest.fixture
def uid(app: Flask, make_user: Callable[..., int]) -> int:
    """A user connected to a personal drive whose sync folder is ``F`` (/drivesync)."""
    user_id = make_user()
    with app.app_context(), user_scope(user_id):
        integration = Integration(
            user_id=user_id, provider="onedrive", folder_id=FOLDER, folder_path="drivesync",
            drive_type="personal",
        )  # fmt: skip
        db.session.add(integration)
        db.session.flush()
        integrations.save_token(
            integration, {"access_token": "A", "refresh_token": "R", "expires_in": 3600}
        )
        db.session.commit()
    return user_id


def item(
    item_id: str, name: str, parent: str = FOLDER, *, ctag: str | None = None,
    qxh: str | None = None, folder: bool = False,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {
        "id": item_id, "name": name, "parentReference": {"id": parent},
        "eTag": f"e-{item_id}-{ctag}-{name}", "size": 3,
    }  # fmt: skip
    if folder:
        out["folder"] = {"childCount": 0}
    else:
        out["cTag"] = ctag or f"c-{item_id}"
        out["file"] = {"hashes": {"quickXorHash": qxh or f"h-{item_id}"}}
    return out


def gone(item_id: str) -> dict[str, Any]:
    """A deleted item as a business drive sends it: no name."""
    return {"id": item_id, "deleted": {"state": "deleted"}, "parentReference": {"id": "root"}}


def page(url: str, items: list[dict[str, Any]], *, next_link: str | None = None,
         delta_link: str | None = None, match_query: bool = True) -> None:  # fmt: skip
    body: dict[str, Any] = {"value": items}
    if next_link:
        body["@odata.nextLink"] = next_link
    if delta_link:
        body["@odata.deltaLink"] = delta_link
    responses.get(url, json=body, match=[responses.matchers.query_string_matcher(
        url.partition("?")[2])] if match_query and "?" in url else [])  # fmt: skip


def add_file(app: Flask, uid: int, name: str, **values: Any) -> int:
    defaults: dict[str, Any] = {
        "owner_id": uid, "original_name": name, "stored_path": f"p/{name}", "size": 3,
        "mime_type": "text/plain", "content_hash": "s-" + name, "quick_xor_hash": "q-" + name,
    }  # fmt: skip
    defaults.update(values)
    with app.app_context(), user_scope(uid):
        f = File(**defaults)
        db.session.add(f)
        db.session.commit()
        return f.id


def synced_file(app: Flask, uid: int, name: str, item_id: str, **values: Any) -> int:
    """A file synced as ``item_id`` (cTag c-<id>, qxh = library's) under /drivesync."""
    return add_file(
        app, uid, name, onedrive_id=item_id, onedrive_sync_status="synced",
        onedrive_ctag=f"c-{item_id}", onedrive_etag=f"e-{item_id}", onedrive_name=name,
        onedrive_path=f"/drivesync/{name}", synced_content_hash="s-" + name, **values,
    )  # fmt: skip


def run_check(app: Flask, uid: int, now: Any = None) -> changes.CheckResult | None:
    with app.app_context(), user_scope(uid):
        return changes.check(uid, now or utcnow())


def state(app: Flask, uid: int) -> dict[str, Any]:
    with app.app_context(), user_scope(uid):
        i = db.session.execute(db.select(Integration)).scalar_one()
        db.session.refresh(i, ["delta_link"])
        return {
            "link": i.delta_link, "error": i.delta_error, "failures": i.delta_failures,
            "new": i.remote_new_count, "due": i.delta_due_at, "checked": i.delta_checked_at,
            "mirror": {
                r.item_id: (r.parent_id, r.name, r.ctag)
                for r in db.session.execute(db.select(RemoteItem)).scalars()
            },
            "staged": db.session.execute(db.select(RemoteItemChange)).scalars().all(),
            "files": {
                f.original_name: (f.onedrive_sync_status, f.onedrive_id, f.onedrive_path)
                for f in db.session.execute(db.select(File)).scalars()
            },
        }  # fmt: skip


def seed(app: Flask, uid: int, items: list[dict[str, Any]]) -> None:
    """Run a first check that lists ``items`` and leaves deltaLink LINK1."""
    page(START, items, delta_link=LINK1, match_query=False)
    assert run_check(app, uid) is not None


# -- the transition table ------------------------------------------------------------------------

STATES = [
    "not_synced", "syncing", "synced", "error", "conflict", "remote_changed",
    "remote_deleted", "local_only",
]  # fmt: skip
RD = Decision("remote_deleted", event="remote_deleted")
RC = Decision("remote_changed", follow=True, event="remote_changed")
CF = Decision("conflict", follow=True, event="conflict")
FOLLOW = Decision(follow=True, event="remote_moved")
KEEP = Decision(follow=True)
NONE = Decision()
# (change, library_changed) -> expected decision per state, policy "ask"
TABLE: dict[tuple[str, bool], dict[str, Decision]] = {
    (EDITED, False): {
        "not_synced": RC, "syncing": NONE, "synced": RC, "error": RC, "conflict": KEEP,
        "remote_changed": KEEP, "remote_deleted": RC, "local_only": NONE,
    },
    (EDITED, True): {
        "not_synced": CF, "syncing": NONE, "synced": CF, "error": CF, "conflict": KEEP,
        "remote_changed": CF, "remote_deleted": CF, "local_only": NONE,
    },
    (MOVED, False): {
        "not_synced": FOLLOW, "syncing": NONE, "synced": FOLLOW, "error": FOLLOW,
        "conflict": FOLLOW, "remote_changed": FOLLOW, "local_only": NONE,
        "remote_deleted": Decision("synced", follow=True, event="remote_moved"),
    },
    (SAME, False): {
        "not_synced": KEEP, "syncing": NONE, "synced": KEEP, "error": KEEP, "conflict": KEEP,
        "remote_changed": KEEP, "remote_deleted": Decision("synced", follow=True),
        "local_only": NONE,
    },
    (SAME, True): {"remote_deleted": Decision("not_synced", follow=True, mark_due=True)},
    (DELETED, False): {
        "not_synced": RD, "syncing": NONE, "synced": RD, "error": RD, "conflict": RD,
        "remote_changed": RD, "remote_deleted": NONE, "local_only": NONE,
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "library_changed", "st"),
    [(c, lc, s) for (c, lc), row in TABLE.items() for s in row],
)
def test_transition_table(change: str, library_changed: bool, st: str) -> None:
    expected = TABLE[(change, library_changed)][st]
    got = decide(change, st, tracked=True, library_changed=library_changed, policy="ask")
    assert got == expected


@pytest.mark.parametrize("change", [EDITED, MOVED, SAME, DELETED])
def test_untracked_file_never_changes(change: str) -> None:
    assert decide(change, "not_synced", tracked=False, library_changed=False, policy="ask") == NONE


@pytest.mark.parametrize("st", ["not_synced", "synced", "error", "conflict", "remote_changed"])
def test_deletion_follows_the_policy(st: str) -> None:
    up = decide(DELETED, st, tracked=True, library_changed=False, policy="upload")
    assert up == Decision("not_synced", clear_ids=True, mark_due=True, event="remote_deleted")
    keep = decide(DELETED, st, tracked=True, library_changed=False, policy="keep")
    assert keep == Decision("local_only", clear_ids=True, event="remote_deleted")


def test_our_own_upload_is_not_an_edit() -> None:
    kw: dict[str, Any] = dict(
        deleted=False, remote_etag="e2", parent_id=FOLDER, name="a", synced_etag="e1",
        library_hash="H", known_parent=FOLDER, known_name="a",
    )  # fmt: skip
    # cTag equal to what the file last synced
    assert changes.classify(remote_ctag="c1", remote_hash="X", synced_ctag="c1", **kw) == SAME
    # a new cTag but the library's own bytes (the echo of our upload)
    assert changes.classify(remote_ctag="c2", remote_hash="H", synced_ctag="c1", **kw) == SAME
    assert changes.classify(remote_ctag="c2", remote_hash="X", synced_ctag="c1", **kw) == EDITED
    # no cTag (Business, hash pending): a changed eTag with the same name is an edit
    assert changes.classify(remote_ctag=None, remote_hash=None, synced_ctag=None, **kw) == EDITED
    kw["name"] = "b"
    assert changes.classify(remote_ctag=None, remote_hash=None, synced_ctag=None, **kw) == MOVED


# -- link validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "ok"),
    [
        (f"{GRAPH}/me/drive/items/F/delta?token=abc", True),
        (f"{GRAPH}/drives/d1/items/F/delta?token=abc&$top=5&$skiptoken=9", True),
        (f"{GRAPH}/me/drive/items/F/delta", True),
        ("https://evil.example/v1.0/me/drive/items/F/delta?token=abc", False),
        ("http://graph.microsoft.com/v1.0/me/drive/items/F/delta", False),
        (f"{GRAPH}/me/drive/items/OTHER/delta?token=a", False),
        (f"{GRAPH}/me/drive/root/delta?token=a", False),
        (f"{GRAPH}/me/drive/items/F/delta/../../root/delta", False),
        (f"{GRAPH}/me/drive/items/F/%2e%2e/delta", False),
        (f"{GRAPH}/me/drive/items/F/children?token=a", False),
        (f"{GRAPH}/me/drive/items/F/delta?token=a&redirect=x", False),
        (f"{GRAPH}/me/drive/items/F/delta?token=a#frag", False),
        ("https://user:pw@graph.microsoft.com/v1.0/me/drive/items/F/delta", False),
        ("https://graph.microsoft.com:99999/v1.0/me/drive/items/F/delta", False),
    ],
)
def test_delta_link_validation(link: str, ok: bool) -> None:
    assert is_delta_link(link, GRAPH, FOLDER) is ok


@responses.activate
def test_a_next_link_elsewhere_is_never_followed_and_changes_nothing(app: Flask, uid: int) -> None:
    page(START, [item("a", "a.txt")], next_link="https://evil.example/v1.0/me/drive/items/F/delta?token=x",
         match_query=False)  # fmt: skip
    assert run_check(app, uid) is None
    assert all("evil" not in c.request.url for c in responses.calls)
    s = state(app, uid)
    assert s["mirror"] == {} and s["staged"] == [] and s["link"] is None
    assert s["failures"] == 1 and s["error"]


# -- the check -------------------------------------------------------------------------------------


@responses.activate
def test_first_check_streams_pages_last_occurrence_wins_and_counts_new(
    app: Flask, uid: int
) -> None:
    fid = synced_file(app, uid, "tracked.txt", "t")
    nxt = f"{START}?token=&$top=1000&$skiptoken=2"
    page(START, [item(FOLDER, "drivesync", "root", folder=True), item("a", "old.txt")],
         next_link=nxt, match_query=False)  # fmt: skip
    second = [item("a", "new.txt"), item("t", "tracked.txt"), item("s", "sub", folder=True),
              item("b", "b.txt", "s")]  # fmt: skip
    query = {"token": "", "$top": "1000", "$skiptoken": "2"}
    responses.get(
        nxt, json={"value": second, "@odata.deltaLink": LINK1},
        match=[responses.matchers.query_param_matcher(query)],
    )  # fmt: skip
    now = utcnow()
    result = run_check(app, uid, now)
    assert result is not None and result.requests == 2 and result.items == 6
    s = state(app, uid)
    assert s["mirror"]["a"][1] == "new.txt"  # the last occurrence won, once
    assert len(s["mirror"]) == 5 and s["staged"] == []
    assert s["new"] == 2  # a and b (in a subfolder); t is tracked; folders never count
    assert s["link"] == LINK1 and s["error"] is None and s["checked"] == now
    assert s["due"] == now + timedelta(seconds=900)
    assert s["files"]["tracked.txt"][0] == "synced"
    with app.app_context(), user_scope(uid):
        assert changes.untracked_item_ids(uid, ["a", "b", "t", "s", "zz"]) == {"a", "b"}
        assert db.session.get(File, fid).onedrive_sync_status == "synced"


@responses.activate
def test_a_check_when_nothing_changed_costs_one_request(app: Flask, uid: int) -> None:
    synced_file(app, uid, "x.txt", "x")
    seed(app, uid, [item("x", "x.txt")])
    responses.calls.reset()
    page(LINK1, [], delta_link=LINK2)
    result = run_check(app, uid)
    assert result is not None and result.requests == 1 and len(responses.calls) == 1
    s = state(app, uid)
    assert s["link"] == LINK2 and s["files"]["x.txt"][0] == "synced"


@responses.activate
def test_edit_rename_move_delete_and_new_file(app: Flask, uid: int) -> None:
    synced_file(app, uid, "edit.txt", "e")
    synced_file(app, uid, "ren.txt", "r")
    synced_file(app, uid, "mov.txt", "m")
    synced_file(app, uid, "del.txt", "d")
    synced_file(app, uid, "out.txt", "o")
    synced_file(app, uid, "echo.txt", "u")
    synced_file(app, uid, "both.txt", "w", content_hash="s-changed")
    seed(app, uid, [item(i, n) for i, n in [("e", "edit.txt"), ("r", "ren.txt"), ("m", "mov.txt"),
                    ("d", "del.txt"), ("o", "out.txt"), ("u", "echo.txt"), ("w", "both.txt")]]
         + [item("s", "sub", folder=True)])  # fmt: skip
    page(LINK1, [
        item("e", "edit.txt", ctag="c-new"),
        item("r", "renamed.txt"),
        item("m", "mov.txt", "s"),
        gone("d"),
        gone("o"),  # moved out of the folder arrives as deleted
        item("u", "echo.txt", ctag="c-ours", qxh="q-echo.txt"),  # our own upload echoing back
        item("w", "both.txt", ctag="c-theirs"),
        item("n", "new.pdf"),
    ], delta_link=LINK2)  # fmt: skip
    run_check(app, uid)
    s = state(app, uid)
    f = s["files"]
    assert f["edit.txt"][0] == "remote_changed"
    assert f["ren.txt"] == ("synced", "r", "/drivesync/renamed.txt")
    assert f["mov.txt"] == ("synced", "m", "/drivesync/sub/mov.txt")
    assert f["del.txt"][:2] == ("remote_deleted", "d")
    assert f["out.txt"][0] == "remote_deleted"
    assert f["echo.txt"][0] == "synced"
    assert f["both.txt"][0] == "conflict"
    assert s["new"] == 1 and "d" not in s["mirror"]
    with app.app_context(), user_scope(uid):
        kinds = {e.kind for e in db.session.execute(db.select(FileEvent)).scalars()}
        assert {"remote_changed", "remote_moved", "remote_deleted", "conflict"} <= kinds


@responses.activate
@pytest.mark.parametrize("policy", ["upload", "keep"])
def test_deletion_policy(app: Flask, uid: int, policy: str) -> None:
    synced_file(app, uid, "a.txt", "a")
    with app.app_context(), user_scope(uid):
        changes.set_policy(uid, policy)
    seed(app, uid, [item("a", "a.txt")])
    page(LINK1, [gone("a")], delta_link=LINK2)
    run_check(app, uid)
    st, item_id, _ = state(app, uid)["files"]["a.txt"]
    assert (st, item_id) == ({"upload": "not_synced", "keep": "local_only"}[policy], None)


@responses.activate
def test_a_deleted_item_restored_is_synced_again(app: Flask, uid: int) -> None:
    synced_file(app, uid, "a.txt", "a")
    seed(app, uid, [item("a", "a.txt")])
    page(LINK1, [gone("a")], delta_link=LINK2)
    run_check(app, uid)
    assert state(app, uid)["files"]["a.txt"][0] == "remote_deleted"
    page(LINK2, [item("a", "a.txt")], delta_link=f"{START}?token=t3")
    run_check(app, uid)
    assert state(app, uid)["files"]["a.txt"] == ("synced", "a", "/drivesync/a.txt")


@responses.activate
def test_a_failed_page_changes_nothing(app: Flask, uid: int) -> None:
    synced_file(app, uid, "a.txt", "a")
    seed(app, uid, [item("a", "a.txt")])
    before = state(app, uid)
    nxt = f"{START}?token=t1&$skiptoken=1"
    page(LINK1, [gone("a"), item("n", "n.txt")], next_link=nxt)
    responses.get(nxt, status=403, json={"error": {"code": "accessDenied", "message": "no"}})
    now = utcnow()
    assert run_check(app, uid, now) is None
    after = state(app, uid)
    assert after["mirror"] == before["mirror"] and after["files"] == before["files"]
    assert after["staged"] == [] and after["link"] == LINK1 and after["new"] == before["new"]
    assert after["failures"] == 1 and after["error"] and after["due"] > now
    assert after["checked"] == before["checked"]


@responses.activate
def test_auth_failure_marks_reconnect(app: Flask, uid: int) -> None:
    seed(app, uid, [])
    responses.get(LINK1, status=401, json={"error": {"code": "InvalidAuthenticationToken"}})
    responses.post(
        "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        status=400, json={"error": "invalid_grant", "error_description": "revoked"},
    )  # fmt: skip
    assert run_check(app, uid) is None
    with app.app_context(), user_scope(uid):
        assert db.session.execute(db.select(Integration.status)).scalar_one() == "needs_reauth"


@responses.activate
def test_410_apply_differences_reenumerates_without_loss_or_duplicates(
    app: Flask, uid: int
) -> None:
    synced_file(app, uid, "keep.txt", "k")
    synced_file(app, uid, "lost.txt", "l")
    synced_file(app, uid, "edited.txt", "e")
    seed(app, uid, [item("k", "keep.txt"), item("l", "lost.txt"), item("e", "edited.txt"),
                    item("n", "new.txt")])  # fmt: skip
    location = f"{START}?token=resync"
    responses.get(
        LINK1, status=410, headers={"Location": location},
        json={"error": {"code": RESYNC_APPLY, "message": "gone"}},
    )  # fmt: skip
    nxt = f"{START}?token=resync&$skiptoken=2"
    page(location, [item("k", "keep.txt"), item("n", "new.txt")], next_link=nxt)
    page(nxt, [item("e", "edited.txt", ctag="c-2"), item("k", "keep.txt")], delta_link=LINK2)
    result = run_check(app, uid)
    assert result is not None and result.resync == RESYNC_APPLY
    s = state(app, uid)
    assert sorted(s["mirror"]) == ["e", "k", "n"]  # nothing duplicated, the lost one gone
    assert s["files"]["keep.txt"][0] == "synced"
    assert s["files"]["lost.txt"][:2] == ("remote_deleted", "l")  # server wins, asks the user
    assert s["files"]["edited.txt"][0] == "remote_changed"
    assert s["new"] == 1 and s["link"] == LINK2


@responses.activate
def test_410_upload_differences_our_side_wins(app: Flask, uid: int) -> None:
    synced_file(app, uid, "lost.txt", "l")
    synced_file(app, uid, "edited.txt", "e")
    seed(app, uid, [item("l", "lost.txt"), item("e", "edited.txt")])
    responses.get(LINK1, status=410, json={"error": {"code": RESYNC_UPLOAD, "message": "gone"}})
    page(START, [item("e", "edited.txt", ctag="c-2")], delta_link=LINK2, match_query=False)
    result = run_check(app, uid)
    assert result is not None and result.resync == RESYNC_UPLOAD
    f = state(app, uid)["files"]
    assert f["lost.txt"][:2] == ("not_synced", None)  # uploaded again, as a new item
    assert f["edited.txt"][0] == "conflict"  # keep both unless the user picks one


@responses.activate
def test_scheduler_runs_the_check_only_when_due(app: Flask, uid: int) -> None:
    now = utcnow()
    with app.app_context(), user_scope(uid):
        i = db.session.execute(db.select(Integration)).scalar_one()
        i.delta_due_at = now + timedelta(minutes=5)
        db.session.commit()
        scheduler.check_remote_changes(uid, now)
    assert len(responses.calls) == 0
    page(START, [item("a", "a.txt")], delta_link=LINK1, match_query=False)
    with app.app_context(), user_scope(uid):
        scheduler.check_remote_changes(uid, now + timedelta(minutes=5))
    assert state(app, uid)["link"] == LINK1


def test_next_interval_and_status(app: Flask, uid: int) -> None:
    with app.app_context(), user_scope(uid):
        assert changes.next_interval(uid) == 900
        st = changes.status(uid)
        assert st.mode == "polling" and st.interval_seconds == 900 and st.new_count == 0


# -- file actions --------------------------------------------------------------------------------


@responses.activate
def test_file_actions(
    app: Flask, uid: int, make_user: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    queued: list[list[int]] = []
    monkeypatch.setattr(sync, "request_sync", lambda user_id, ids: queued.append(list(ids)))
    rc = synced_file(app, uid, "rc.txt", "rc")
    rd = synced_file(app, uid, "rd.txt", "rd")
    seed(app, uid, [item("rc", "rc.txt"), item("rd", "rd.txt")])
    page(LINK1, [item("rc", "rc.txt", ctag="c-new"), gone("rd")], delta_link=LINK2)
    run_check(app, uid)
    with app.app_context(), user_scope(uid):
        sync.keep_library_version(uid, rc)
        f = db.session.get(File, rc)
        # OneDrive's current version is the base: the transfer replaces it instead of a conflict
        assert f.onedrive_sync_status in ("not_synced", "syncing", "synced", "error")
        assert f.onedrive_ctag == "c-new" or f.onedrive_sync_status != "not_synced"
        with pytest.raises(Conflict):
            sync.keep_library_version(uid, rd)
        sync.keep_only_in_library(uid, rd)
        g = db.session.get(File, rd)
        assert (g.onedrive_sync_status, g.onedrive_id) == ("local_only", None)
        with pytest.raises(Conflict):
            sync.keep_only_in_library(uid, rd)
        with pytest.raises(NotFound):
            sync.upload_again(uid, 999_999)
        sync.upload_again(uid, rd)
        g = db.session.get(File, rd)
        db.session.refresh(g)
        assert (g.onedrive_sync_status, g.onedrive_id) == ("not_synced", None)
        assert queued == [[rc], [rd]]
        with pytest.raises(Conflict):
            sync.upload_again(uid, rc)
    other = make_user()
    with app.app_context(), user_scope(other):
        with pytest.raises(NotFound):
            sync.keep_only_in_library(other, rd)


def test_local_only_is_never_picked_by_sync(app: Flask, uid: int) -> None:
    add_file(app, uid, "lo.txt", onedrive_sync_status="local_only")
    with app.app_context(), user_scope(uid):
        assert sync.pending_files(uid) == []
        assert autosync.waiting_files(uid, 10) == []
