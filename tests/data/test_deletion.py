"""Account deletion: OneDrive disconnected first, then every byte and row of the user gone."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from drivesync import events
from drivesync.extensions import db
from drivesync.models import AuditEvent, File, Integration, SyncRun, User
from drivesync.scope import user_scope
from drivesync.services import audit, integrations
from tests.conftest import PASSWORD, PG_OWNER_URL, csrf_token, db_rows
from tests.data.conftest import audit_rows


def _rows_of(app, uid: int) -> dict[str, int]:
    """Count, in every table with a user column, the rows that belong to ``uid``."""
    counts: dict[str, int] = {}
    with app.app_context(), user_scope(uid):
        for table in db.metadata.sorted_tables:
            for column in ("user_id", "owner_id"):
                if column in table.c:
                    n = db.session.execute(
                        db.select(db.func.count()).select_from(table).where(table.c[column] == uid)
                    ).scalar_one()
                    counts[table.name] = n
        counts["users"] = db.session.execute(
            db.select(db.func.count()).select_from(User).where(User.id == uid)
        ).scalar_one()
    return counts


def _seed(app, make_file, uid: int) -> list[int]:
    ids = [make_file(uid, "a.pdf", b"aaa"), make_file(uid, "b.pdf", b"bbb")]
    with app.test_request_context("/"), user_scope(uid):
        integration = Integration(user_id=uid, provider="onedrive", drive_type="personal")
        db.session.add_all([integration, SyncRun(user_id=uid)])
        db.session.flush()
        integrations.save_token(integration, {"access_token": "at", "refresh_token": "rt"})
        events.signed_in.send(None, user_id=uid)
        events.file_uploaded.send(None, user_id=uid, file_id=ids[0], size=3)
        db.session.commit()
    return ids


def test_wrong_password_deletes_nothing(app, make_user, make_file, signed_in):
    """Without the right password the account stays as it was."""
    uid = make_user()
    _seed(app, make_file, uid)
    client = signed_in(uid)
    before = _rows_of(app, uid)
    r = client.post(
        "/account/delete",
        data={"csrf_token": csrf_token(client, "/account/delete"), "password": "nope"},
    )
    assert r.status_code == 400
    assert "not your current password" in r.get_data(as_text=True)
    assert _rows_of(app, uid) == before


def test_deletion_leaves_no_row_no_byte_no_token_and_no_sign_in(
    app, make_user, make_file, signed_in
):
    """After deletion no table and no stored byte belongs to the user, and signing in fails."""
    uid, other = make_user("gone@example.com"), make_user("stays@example.com")
    _seed(app, make_file, uid)
    other_file = make_file(other, "keep.txt", b"keep")
    storage = Path(app.config["STORAGE_DIR"])
    with app.app_context(), user_scope(uid):
        mine = list(
            db.session.execute(db.select(File.stored_path).where(File.owner_id == uid)).scalars()
        )
    client = signed_in(uid)
    page = client.get("/account/delete").get_data(as_text=True)
    assert (
        "https://account.live.com/consent/Manage" in page and "https://myapps.microsoft.com" in page
    )
    assert "Copies on OneDrive stay." in page
    r = client.post(
        "/account/delete",
        data={"csrf_token": csrf_token(client, "/account/delete"), "password": PASSWORD},
    )
    assert r.status_code == 303
    assert all(n == 0 for n in _rows_of(app, uid).values()), _rows_of(app, uid)
    assert mine and not any((storage / name).exists() for name in mine), (
        mine,
        list(storage.iterdir()),
    )
    with app.app_context(), user_scope(uid):
        assert not integrations.token_exists(uid)
    assert [f.id for f in db_rows(app, File, other)] == [other_file]
    login = app.test_client()
    token = csrf_token(login, "/login")
    r = login.post(
        "/login", data={"csrf_token": token, "email": "gone@example.com", "password": PASSWORD}
    )
    assert r.status_code == 401
    assert client.get("/library/").status_code in (302, 303)


def test_audit_entries_are_kept_pseudonymised(app, make_user, make_file, signed_in):
    """The user's audit entries stay for the retention period under a keyed hash, not the id."""
    uid = make_user()
    _seed(app, make_file, uid)
    client = signed_in(uid)
    client.post(
        "/account/delete",
        data={"csrf_token": csrf_token(client, "/account/delete"), "password": PASSWORD},
    )
    assert audit_rows(app, uid) == []
    with app.app_context():
        pseudonym = audit.keyed_hash(f"user:{uid}")
    query = db.select(AuditEvent.action, AuditEvent.user_id).where(
        AuditEvent.actor_hash == pseudonym
    )
    if PG_OWNER_URL:  # the app's role no longer sees rows without a user: read as the owner
        engine = create_engine(PG_OWNER_URL)
        with engine.connect() as conn:
            kept = conn.execute(query).all()
        engine.dispose()
    else:
        with app.app_context():
            kept = db.session.execute(query).all()
    assert {action for action, _ in kept} >= {"sign_in.succeeded", "account.deleted"}
    assert all(user_id is None for _, user_id in kept)


def test_every_user_table_is_checked(app, make_user):
    """The row check above covers every table with a user column, ours and those added later."""
    checked = set(_rows_of(app, make_user()))
    assert {
        "users",
        "files",
        "integrations",
        "oauth_tokens",
        "sync_runs",
        "file_events",
        "export_jobs",
        "audit_events",
    } <= checked


@pytest.mark.parametrize(
    "app_overrides", [{"RATELIMIT_ENABLED": True, "LOGIN_RATE_LIMIT": "2 per minute"}]
)
def test_password_attempts_on_the_deletion_form_are_rate_limited(app, make_user, signed_in):
    """A stolen session cannot guess the password on the deletion form without limit."""
    uid = make_user()
    client = signed_in(uid)
    token = csrf_token(client, "/account/delete")
    codes = [
        client.post("/account/delete", data={"csrf_token": token, "password": "guess"}).status_code
        for _ in range(3)
    ]
    assert codes == [400, 400, 429]
