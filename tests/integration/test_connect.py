"""Connect, reconnect and disconnect OneDrive through the emulator, over real sockets."""

from __future__ import annotations

import pytest

from drivesync.extensions import db
from drivesync.models import File, Integration, OAuthToken
from drivesync.scope import user_scope
from drivesync.services import integrations
from tests.conftest import db_rows
from tests.integration.conftest import ALEX, MEGAN, consent, csrf_from, query

pytestmark = pytest.mark.emulator


@pytest.fixture
def user(make_user, login):
    """A signed-in user."""
    uid = make_user("owner@example.com")
    login(uid)
    return uid


def test_connect_stores_integration_and_encrypted_tokens(client, app, user, connect, emu):
    """Connect reads the account and drive, makes the folder, and stores tokens encrypted."""
    r = connect(ALEX)
    assert r.status_code == 303
    page = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "Connected" in page and "Alex Wilber" in page and ALEX in page
    [i] = db_rows(app, Integration, user)
    assert (i.status, i.drive_type, i.folder_path) == ("active", "personal", "drivesync")
    assert i.folder_id and i.drive_id and i.quota_total
    assert any(it["path"].endswith("/drivesync") and it["folder"] for it in emu.list_items(ALEX))
    with app.app_context(), user_scope(user):
        row = db.session.execute(db.select(OAuthToken)).scalar_one()
        assert row.access_token_encrypted.startswith("v1.")
        client_, _ = integrations.graph_client_for(user)
        assert client_.me()["mail"] == ALEX  # the stored token works


def test_authorize_request_has_state_pkce_and_account_picker(client, user):
    """The redirect to Microsoft carries state, an S256 challenge and prompt=select_account."""
    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    r = client.post("/settings/onedrive/connect", data={"csrf_token": token})
    q = query(r.headers["Location"])
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert q["prompt"] == "select_account" and len(q["state"]) >= 32
    assert q["redirect_uri"] == "http://localhost/settings/onedrive/callback"
    assert "offline_access" in q["scope"]
    with client.session_transaction() as sess:
        assert sess["onedrive_oauth"]["state"] == q["state"]


def test_cancel_on_consent_page_is_friendly(client, app, user, connect):
    """Cancelling at Microsoft shows a friendly message and connects nothing."""
    r = connect(ALEX, accept=False)
    assert r.status_code == 303
    page = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "You cancelled the Microsoft sign-in" in page
    assert db_rows(app, Integration, user) == []


def test_forged_or_replayed_state_is_refused(client, app, user):
    """A callback whose state does not match, or that is replayed, is a 400 and changes nothing."""
    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    r = client.post("/settings/onedrive/connect", data={"csrf_token": token})
    back = consent(r.headers["Location"])
    q = query(back)
    forged = client.get(f"/settings/onedrive/callback?code={q['code']}&state=forged")
    assert forged.status_code == 400
    # The forged attempt consumed the pending sign-in: the real answer is now a replay.
    replay = client.get(f"/settings/onedrive/callback?code={q['code']}&state={q['state']}")
    assert replay.status_code == 400
    assert db_rows(app, Integration, user) == []


def test_disconnect_is_idempotent_and_keeps_files(client, app, user, connect, make_file):
    """Disconnect deletes integration and tokens, keeps files, and can be repeated."""
    fid = make_file(user, "keep.txt", b"keep me")
    connect(ALEX)
    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    for _ in range(2):
        r = client.post("/settings/onedrive/disconnect", data={"csrf_token": token})
        assert r.status_code == 303
    assert db_rows(app, Integration, user) == [] and db_rows(app, OAuthToken, user) == []
    assert [f.id for f in db_rows(app, File, user)] == [fid]
    assert "Not connected" in client.get("/settings/onedrive/").get_data(as_text=True)


def test_disconnect_needs_csrf(client, app, user, connect):
    """Disconnect without the CSRF token is refused."""
    connect(ALEX)
    assert client.post("/settings/onedrive/disconnect").status_code == 400
    assert len(db_rows(app, Integration, user)) == 1


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (MEGAN, ("not_synced", None)),  # another account: the links point into the wrong drive
        (ALEX, ("synced", "ITEM1")),
    ],  # the same account: the links still hold
)
def test_reconnect_keeps_links_only_for_the_same_account(
    client, app, user, connect, make_file, second, expected
):
    """Reconnecting resets every file's OneDrive link, unless it is the same account."""
    fid = make_file(user, "a.txt", b"a")
    connect(ALEX)
    with app.app_context(), user_scope(user):
        f = db.session.get(File, fid)
        f.onedrive_sync_status, f.onedrive_id = "synced", "ITEM1"
        db.session.commit()
    connect(second)
    [i] = db_rows(app, Integration, user)
    assert i.account_email == second
    assert i.drive_type == ("business" if second == MEGAN else "personal")
    [f] = db_rows(app, File, user)
    assert (f.onedrive_sync_status, f.onedrive_id) == expected


def test_revoked_consent_marks_reauth_once(client, app, user, connect, emu):
    """After consent is revoked, the refresh fails once and the page offers Reconnect."""
    connect(ALEX)
    emu.revoke_consent(ALEX)
    with app.app_context(), user_scope(user):
        client_, _ = integrations.graph_client_for(user)
        from drivesync.graph.errors import AuthError, GraphError

        with pytest.raises((AuthError, GraphError)):
            client_.me()
    [i] = db_rows(app, Integration, user)
    assert i.status == "needs_reauth"
    page = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "Reconnect needed" in page and ">Reconnect<" in page
    token_requests = [r for r in emu.requests_log() if r["path"].endswith("/oauth2/v2.0/token")]
    assert len(token_requests) <= 2  # the exchange at connect + at most one refresh, no storm


def test_app_folder_scope_uses_the_app_folder(client, app, user, connect, emu):
    """With Files.ReadWrite.AppFolder, files go to the app's own folder under /Apps."""
    app.config["MS_SCOPES"] = "offline_access User.Read Files.ReadWrite.AppFolder"
    assert connect(ALEX).status_code == 303
    [i] = db_rows(app, Integration, user)
    assert i.folder_path.startswith("Apps/") and i.folder_id
    paths = {it["path"] for it in emu.list_items(ALEX) if it["folder"]}
    assert "/" + i.folder_path in paths


def test_browse_pages_through_the_folder(client, app, user, connect, emu, monkeypatch):
    """Browse shows the folder a page at a time; "Show more" follows Graph's next link."""
    from drivesync.services import remote

    monkeypatch.setattr(remote, "BROWSE_PAGE", 2)
    connect(ALEX)
    names = [f"doc{i}.txt" for i in range(5)]
    for name in names:
        emu.modify_item(ALEX, f"/drivesync/{name}", name.encode())
    html = client.get("/settings/onedrive/browse").get_data(as_text=True)
    seen = [n for n in names if f'data-name="{n}"' in html]
    assert len(seen) == 2 and "Show more" in html
    while "Show more" in html:
        link = html.split('hx-get="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
        html = client.get(link, headers={"HX-Request": "true"}).get_data(as_text=True)
        assert "<html" not in html  # rows only
        seen += [n for n in names if f'data-name="{n}"' in html]
    assert sorted(seen) == names
    other = "http://evil.example/v1.0/me/drive/root/children"
    assert client.get("/settings/onedrive/browse", query_string={"next": other}).status_code == 404
