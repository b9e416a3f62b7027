"""Change detection (services/changes.py, graph/delta.py): the transition table, delta links,
and checks against a mocked Graph: pages staged and applied only after the deltaLink, a partial
or failed listing changes nothing, the last occurrence of an item wins, 410 enumerates again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from flask import Flask

from drivesync.extensions import db
from drivesync.graph import delta
from drivesync.graph.client import GraphClient
from drivesync.graph.retry import Pacer
from drivesync.models import File, Integration, RemoteItem, RemoteItemChange, utcnow
from drivesync.services import changes
from drivesync.services.changes import Local, Remote, Transition, decide
from tests.unit.conftest import FOLDER_ID

GRAPH = "https://graph.example/v1.0"
START = f"{GRAPH}/me/drive/items/{FOLDER_ID}/delta"


# -- the transition table ----------------------------------------------------------------------


def local(status: str, **kw: Any) -> Local:
    """A tracked library file whose synced bytes hash to "H" (eTag "E1", name "a.txt")."""
    values: dict[str, Any] = {
        "status": status, "etag": "E1", "ctag": "C1", "quick_xor_hash": "H", "size": 5,
        "content_hash": "sha", "synced_content_hash": "sha", "skipped_hash": None,
        "name": "a.txt", "parent_id": "P",
    }  # fmt: skip
    values.update(kw)
    return Local(**values)


OLD = Remote(False, "E1", "C1", "H", 5, "a.txt", "P")
EDITED = Remote(False, "E2", "C2", "H2", 6, "a.txt", "P")
RENAMED = Remote(False, "E2", "C1", "H", 5, "b.txt", "P")
MOVED = Remote(False, "E2", "C1", "H", 5, "a.txt", "Q")
DELETED = Remote(True, name=None, parent_id="P")
UNCHANGED = Remote(False, "E1", "C1", "H", 5, "a.txt", "P")

STATES = ("not_synced", "syncing", "synced", "error", "conflict", "remote_changed",
          "remote_deleted", "local_only")  # fmt: skip

# (local state, remote change) -> (new state or None for unchanged, kind, clears the link)
TABLE: dict[tuple[str, str], tuple[str | None, str | None, bool]] = {
    ("not_synced", "edited"): ("conflict", "edited", False),
    ("not_synced", "renamed"): (None, "renamed", False),
    ("not_synced", "deleted"): (None, "deleted", True),
    ("syncing", "edited"): (None, None, False),
    ("syncing", "renamed"): (None, None, False),
    ("syncing", "deleted"): (None, None, False),
    ("synced", "edited"): ("remote_changed", "edited", False),
    ("synced", "renamed"): (None, "renamed", False),
    ("synced", "deleted"): ("remote_deleted", "deleted", False),
    ("error", "edited"): ("conflict", "edited", False),
    ("error", "renamed"): (None, "renamed", False),
    ("error", "deleted"): (None, "deleted", True),
    ("conflict", "edited"): (None, "edited", False),
    ("conflict", "renamed"): (None, "renamed", False),
    ("conflict", "deleted"): ("remote_deleted", "deleted", False),
    ("remote_changed", "edited"): (None, "edited", False),
    ("remote_changed", "renamed"): (None, "renamed", False),
    ("remote_changed", "deleted"): ("remote_deleted", "deleted", False),
    ("remote_deleted", "edited"): ("remote_changed", "restored", False),
    ("remote_deleted", "renamed"): ("synced", "restored", False),
    ("remote_deleted", "deleted"): (None, None, False),
    ("local_only", "edited"): (None, None, False),
    ("local_only", "renamed"): (None, None, False),
    ("local_only", "deleted"): (None, None, False),
}
CHANGES = {"edited": EDITED, "renamed": RENAMED, "deleted": DELETED}


@pytest.mark.parametrize(("state", "change"), sorted(TABLE))
def test_transition_table(state: str, change: str) -> None:
    """Each remote change x each local state (policy ask)."""
    t = decide(local(state), OLD, CHANGES[change])
    assert (t.status, t.kind, t.clear_link) == TABLE[(state, change)]


def test_the_table_covers_every_state() -> None:
    """No state is forgotten (a new one must get its row)."""
    assert {s for s, _ in TABLE} == set(STATES)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("ask", ("remote_deleted", False, False)), ("upload", ("not_synced", True, True)),
     ("keep", ("local_only", True, False))],
)  # fmt: skip
def test_deletion_policy(policy: str, expected: tuple[str, bool, bool]) -> None:
    """Deleted in OneDrive: ask, upload again (automatic sync due), or keep only here."""
    t = decide(local("synced"), OLD, DELETED, policy)
    assert (t.status, t.clear_link, t.mark_due) == expected


def test_unchanged_and_own_upload_are_nothing() -> None:
    """The same eTag, or OneDrive holding the library's own bytes, is no remote edit."""
    assert decide(local("synced"), OLD, UNCHANGED) == Transition()
    ours = Remote(False, "E9", "C9", "H", 5, "a.txt", "P")  # our upload after the mirror saw E1
    assert decide(local("synced"), Remote(False, "E1", "C1", "H0", 5, "a.txt", "P"), ours) == (
        Transition()
    )


def test_moved_is_followed_and_rewritten_office_file_is_not_an_edit() -> None:
    """A move is followed by id; bytes OneDrive rewrote (as last seen) are not an edit."""
    assert decide(local("synced"), OLD, MOVED).follow
    rewritten = local("synced", quick_xor_hash="LOCAL")
    seen = Remote(False, "E1", None, "SERVICE", 5, "a.txt", "P")
    renamed = Remote(False, "E2", None, "SERVICE", 5, "b.txt", "P")
    t = decide(rewritten, seen, renamed)
    assert (t.status, t.kind, t.follow) == (None, "renamed", True)


def test_skipped_conflict_keeps_onedrives_copy() -> None:
    """A file whose conflict the user skipped keeps OneDrive's copy when it changes again."""
    skipped = local("not_synced", skipped_hash="sha")
    assert decide(skipped, OLD, EDITED).status is None


def test_upload_differences_resync_turns_edits_into_conflicts_and_deletions_into_uploads() -> None:
    """resyncChangesUploadDifferences: unsure which side is newer, keep both; re-upload missing."""
    assert decide(local("synced"), OLD, EDITED, unsure=True).status == "conflict"
    t = decide(local("synced"), OLD, DELETED, "ask", unsure=True)
    assert (t.status, t.clear_link, t.mark_due) == ("not_synced", True, True)


# -- delta links -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "ok"),
    [
        (f"{GRAPH}/me/drive/items/X/delta?token=abc", True),
        (f"{GRAPH}/drives/d1/items/X/delta(token='abc')", True),
        (f"{GRAPH}/me/drive/root/delta?token=abc", True),
        ("https://evil.example/v1.0/me/drive/items/X/delta?token=abc", False),
        ("http://graph.example/v1.0/me/drive/items/X/delta", False),
        (f"{GRAPH}/me/drive/items/X/children", False),
        (f"{GRAPH}/me/drive/items/X/../../../users/delta", False),
        (f"{GRAPH}/me/drive/items/X/%2e%2e/delta", False),
        (f"{GRAPH}/users/u/drive/items/X/delta", False),
        ("https://graph.example/beta/me/drive/items/X/delta", False),
    ],
)
def test_delta_links_stay_on_graph(link: str, ok: bool) -> None:
    """Only delta URLs on the Graph origin and root are followed (the token goes nowhere else)."""
    assert delta.is_delta_link(link, GRAPH) is ok


@pytest.mark.parametrize(
    ("link", "ok"),
    [
        (f"{GRAPH}/me/drive/items/{FOLDER_ID}/delta?token=abc", True),
        (f"{GRAPH}/drives/d1/items/{FOLDER_ID}/delta?token=a&$top=5&$skiptoken=9", True),
        (f"{GRAPH}/drives/d1/items/{FOLDER_ID.upper()}/delta(token='a')", True),
        (f"{GRAPH}/me/drive/items/{FOLDER_ID}/delta", True),
        # the whole drive, another folder, another item path: never followed
        (f"{GRAPH}/me/drive/root/delta?token=abc", False),
        (f"{GRAPH}/me/drive/items/OTHER/delta?token=abc", False),
        (f"{GRAPH}/drives/d1/root/delta?token=abc", False),
        (f"{GRAPH}/me/drive/items/{FOLDER_ID}/children/delta", False),
        (f"{GRAPH}/me/drive/items/{FOLDER_ID}/x/../delta", False),
        # only Graph's paging keys in the query
        (f"{GRAPH}/me/drive/items/{FOLDER_ID}/delta?token=a&$filter=x", False),
        (f"{GRAPH}/me/drive/items/{FOLDER_ID}/delta?token=a&redirect=https://evil", False),
    ],
)
def test_delta_links_stay_on_the_folder(link: str, ok: bool) -> None:
    """With the folder given, a link must be that folder's delta: nothing wider, nothing else."""
    assert delta.is_delta_link(link, GRAPH, FOLDER_ID) is ok


@pytest.mark.parametrize(
    ("link", "ok"),
    [
        (f"{GRAPH}/drives/b!x/root/delta?token=abc", True),
        (f"{GRAPH}/me/drive/root/delta(token='abc')", True),
        (f"{GRAPH}/drives/b!x/items/{FOLDER_ID}/delta?token=abc", False),
        (f"{GRAPH}/drives/b!x/root/children/delta", False),
        (f"{GRAPH}/drives/b!x/root/delta?token=a&$filter=x", False),
    ],
)
def test_root_delta_links_on_work_or_school_drives(link: str, ok: bool) -> None:
    """Work or school drives are read from their root: links must be the root's delta."""
    assert delta.delta_scope(FOLDER_ID, "business") == delta.ROOT
    assert delta.delta_scope(FOLDER_ID, "personal") == FOLDER_ID
    assert delta.is_delta_link(link, GRAPH, delta.ROOT) is ok


# -- checks against a mocked Graph ----------------------------------------------------------------


def item(item_id: str, name: str, qxh: str = "H", etag: str = "E1", **kw: Any) -> dict[str, Any]:
    """A delta file item in the folder."""
    return {"id": item_id, "name": name, "eTag": etag, "size": 5,
            "file": {"hashes": {"quickXorHash": qxh}},
            "parentReference": {"id": FOLDER_ID}, **kw}  # fmt: skip


@pytest.fixture
def graph(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Iterator[responses.RequestsMock]:
    """Point the check at a mocked Graph (no retries: failures surface at once)."""

    def client_for(user_id: int) -> tuple[GraphClient, Integration]:
        integration = db.session.execute(
            db.select(Integration).where(Integration.user_id == user_id)
        ).scalar_one()
        client = GraphClient(lambda force: "token", base_url=GRAPH,
                             pacer=Pacer(max_attempts=1))  # fmt: skip
        return client, integration

    monkeypatch.setattr(changes, "graph_client_for", client_for)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def due_now(user_id: int) -> None:
    """Make the user's check due."""
    changes.request_check(user_id, min_gap=timedelta(0))


def tracked(user_id: int, make_file: Any, name: str, item_id: str) -> int:
    """A library file synced as ``item_id`` (bytes hash "H", eTag "E1")."""
    fid = int(make_file(user_id, name, b"12345"))
    db.session.execute(
        db.update(File).where(File.id == fid).values(
            onedrive_id=item_id, onedrive_etag="E1", onedrive_name=name,
            onedrive_sync_status="synced", quick_xor_hash="H",
            onedrive_synced_at=utcnow() - timedelta(hours=1),
        )
    )  # fmt: skip
    db.session.commit()
    return fid


def counts(user_id: int) -> tuple[int, int]:
    """Return (mirror rows, staged rows) of the user."""
    mirror = db.session.execute(
        db.select(db.func.count()).select_from(RemoteItem).where(RemoteItem.user_id == user_id)
    ).scalar_one()
    staged = db.session.execute(
        db.select(db.func.count())
        .select_from(RemoteItemChange)
        .where(RemoteItemChange.user_id == user_id)
    ).scalar_one()
    return int(mirror), int(staged)


def test_pages_are_applied_after_the_delta_link_and_the_last_occurrence_wins(
    app: Flask, user: int, ctx: None, make_file: Any, graph: responses.RequestsMock
) -> None:
    """Two pages, one item twice: the later (renamed) state is what the file follows."""
    fid = tracked(user, make_file, "a.txt", "A")
    graph.get(START, json={"value": [item(FOLDER_ID, "drivesync", folder={}), item("A", "a.txt")],
                           "@odata.nextLink": f"{START}?token=p2"})  # fmt: skip
    graph.get(f"{START}?token=p2", json={
        "value": [item("N", "new.jpg"), item("A", "renamed.txt", etag="E2")],
        "@odata.deltaLink": f"{START}?token=d1"})  # fmt: skip
    due_now(user)
    result = changes.check(user)
    assert result is not None and (result.requests, result.new_count) == (2, 1)
    f = db.session.get(File, fid)
    db.session.refresh(f)
    assert (f.onedrive_sync_status, f.onedrive_name) == ("synced", "renamed.txt")
    assert f.onedrive_path == "/drivesync/renamed.txt"
    assert counts(user) == (3, 0)
    integration = db.session.execute(db.select(Integration)).scalar_one()
    assert integration.delta_link == f"{START}?token=d1"
    assert integration.delta_due_at > utcnow() + timedelta(minutes=14)


def test_a_failed_page_changes_nothing(
    app: Flask, user: int, ctx: None, make_file: Any, graph: responses.RequestsMock
) -> None:
    """Page two fails: no state, mirror row or cursor changes; the error is shown; backoff."""
    fid = tracked(user, make_file, "a.txt", "A")
    graph.get(START, json={"value": [item("A", "a.txt", qxh="H2", etag="E2")],
                           "@odata.nextLink": f"{START}?token=p2"})  # fmt: skip
    graph.get(f"{START}?token=p2", status=400, json={"error": {"code": "invalidRequest"}})
    due_now(user)
    assert changes.check(user) is None
    db.session.expire_all()
    assert db.session.get(File, fid).onedrive_sync_status == "synced"
    assert counts(user) == (0, 0)
    integration = db.session.execute(db.select(Integration)).scalar_one()
    assert integration.delta_link is None and integration.delta_failures == 1
    assert integration.delta_error and "Could not check OneDrive" in integration.delta_error
    assert integration.delta_due_at > utcnow()


def test_a_listing_without_a_delta_link_or_a_foreign_link_is_never_applied(
    app: Flask, user: int, ctx: None, make_file: Any, graph: responses.RequestsMock
) -> None:
    """A nextLink to another host is refused (the bearer token stays home); nothing applied."""
    fid = tracked(user, make_file, "a.txt", "A")
    graph.get(
        START,
        json={
            "value": [],
            "@odata.nextLink": "https://evil.example/v1.0/me/drive/items/x/delta?token=1",
        },
    )  # noqa: E501
    due_now(user)
    assert changes.check(user) is None
    assert [c.request.url for c in graph.calls] == [f"{START}?%24top=200"]
    db.session.expire_all()
    assert db.session.get(File, fid).onedrive_sync_status == "synced" and counts(user) == (0, 0)


def test_410_enumerates_again_from_the_location_and_reconciles(
    app: Flask, user: int, ctx: None, make_file: Any, graph: responses.RequestsMock
) -> None:
    """An expired token: a full enumeration from Location; what it lacks was deleted there."""
    a = tracked(user, make_file, "a.txt", "A")
    b = tracked(user, make_file, "b.txt", "B")
    graph.get(START, json={"value": [item("A", "a.txt"), item("B", "b.txt")],
                           "@odata.deltaLink": f"{START}?token=old"})  # fmt: skip
    due_now(user)
    assert changes.check(user) is not None
    gone = {"code": "resyncRequired", "innerError": {"code": "resyncChangesApplyDifferences"}}
    graph.get(f"{START}?token=old", status=410, headers={"Location": f"{START}?token=fresh"},
              json={"error": gone})  # fmt: skip
    graph.get(f"{START}?token=fresh", json={"value": [item("A", "a.txt")],
                                            "@odata.deltaLink": f"{START}?token=new"})  # fmt: skip
    due_now(user)
    result = changes.check(user)
    assert result is not None and result.resynced
    db.session.expire_all()
    assert db.session.get(File, a).onedrive_sync_status == "synced"
    assert db.session.get(File, b).onedrive_sync_status == "remote_deleted"
    assert counts(user) == (1, 0)


def test_a_check_is_claimed_once(
    app: Flask, user: int, ctx: None, graph: responses.RequestsMock
) -> None:
    """Two checks at once: the second finds the first's lease and does nothing."""
    due_now(user)
    now = utcnow()
    assert changes._claim(user, now) is not None
    assert changes._claim(user, now) is None
    assert changes.check(user, now) is None and not graph.calls


def test_policy_is_validated(app: Flask, user: int, ctx: None) -> None:
    """Only ask, upload and keep are policies."""
    with pytest.raises(changes.ValidationError):
        changes.set_policy(user, "delete")
    assert changes.set_policy(user, "keep").remote_policy == "keep"


def test_a_next_link_widening_to_the_drive_root_is_refused(
    app: Flask, user: int, ctx: None, make_file: Any, graph: responses.RequestsMock
) -> None:
    """A nextLink to the drive root's delta (same host) is not followed: the enumeration would
    take in the whole drive. Nothing is applied and the error is recorded."""
    fid = tracked(user, make_file, "a.txt", "A")
    graph.get(START, json={"value": [item("A", "a.txt", qxh="H2", etag="E2")],
                           "@odata.nextLink": f"{GRAPH}/me/drive/root/delta?token=p2"})  # fmt: skip
    due_now(user)
    assert changes.check(user) is None
    assert len(graph.calls) == 1
    db.session.expire_all()
    assert db.session.get(File, fid).onedrive_sync_status == "synced" and counts(user) == (0, 0)
    assert db.session.execute(db.select(Integration.delta_failures)).scalar_one() == 1


def test_a_stored_cursor_of_another_folder_starts_over(
    app: Flask, user: int, ctx: None, make_file: Any, graph: responses.RequestsMock
) -> None:
    """A delta link stored for another folder (the folder changed) is not used: this folder is
    enumerated afresh instead of failing on every check."""
    tracked(user, make_file, "a.txt", "A")
    integration = db.session.execute(db.select(Integration)).scalar_one()
    integration.delta_link = f"{GRAPH}/me/drive/items/OLD-FOLDER/delta?token=x"
    db.session.commit()
    graph.get(START, json={"value": [item("A", "a.txt")],
                           "@odata.deltaLink": f"{START}?token=d1"})  # fmt: skip
    due_now(user)
    result = changes.check(user)
    assert result is not None and result.requests == 1
    assert all("OLD-FOLDER" not in c.request.url for c in graph.calls)
    db.session.expire_all()
    link = (
        db.session.execute(db.select(Integration).options(db.undefer(Integration.delta_link)))
        .scalar_one()
        .delta_link
    )
    assert link == f"{START}?token=d1"


def test_restored_after_the_library_moved_on_is_never_called_newer() -> None:
    """remote_deleted, then the library file replaced (it stays remote_deleted), then the item
    restored in OneDrive with the bytes we had synced: the library is newer, so it uploads
    (not "synced", which would hide the new version; not "OneDrive has a newer version")."""
    replaced = local("remote_deleted", quick_xor_hash="H-new", content_hash="sha-new")
    same_etag = Remote(False, "E1", "C1", "H", 5, "a.txt", "P")
    t = decide(replaced, None, same_etag)
    assert (t.status, t.mark_due, t.follow) == ("not_synced", True, True)
    # restored with tags we cannot match and other bytes: both sides changed, the user chooses
    other = Remote(False, "E9", None, "H-other", 7, "a.txt", "P")
    assert decide(replaced, None, other).status == "conflict"
    # restored holding the library's new bytes already: synced
    theirs = Remote(False, "E9", None, "H-new", 7, "a.txt", "P")
    assert decide(replaced, None, theirs).status == "synced"
    # the library unchanged: as before (synced, or OneDrive's newer version)
    assert decide(local("remote_deleted"), None, same_etag).status == "synced"
    assert decide(local("remote_deleted"), None, EDITED).status == "remote_changed"


def test_a_renamed_subfolder_updates_the_paths_below_it(
    app: Flask, user: int, ctx: None, make_file: Any, graph: responses.RequestsMock
) -> None:
    """Graph does not return a renamed folder's descendants: the file below it still gets its
    new OneDrive path, and stays synced."""
    fid = tracked(user, make_file, "a.txt", "A")
    sub = {"id": "S", "name": "scans", "eTag": "ES1", "folder": {},
           "parentReference": {"id": FOLDER_ID}}  # fmt: skip
    graph.get(START, json={"value": [sub, item("A", "a.txt", parentReference={"id": "S"})],
                           "@odata.deltaLink": f"{START}?token=d1"})  # fmt: skip
    due_now(user)
    assert changes.check(user) is not None
    f = db.session.get(File, fid)
    graph.get(f"{START}?token=d1", json={"value": [dict(sub, name="2026 scans", eTag="ES2")],
                                         "@odata.deltaLink": f"{START}?token=d2"})  # fmt: skip
    due_now(user)
    assert changes.check(user) is not None
    db.session.refresh(f)
    assert (f.onedrive_sync_status, f.onedrive_path) == ("synced", "/drivesync/2026 scans/a.txt")
