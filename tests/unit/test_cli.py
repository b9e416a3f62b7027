"""The flask commands: users, tokens and sync."""

from __future__ import annotations

from typing import Any

import pytest

from drivesync.extensions import db
from drivesync.models import Integration, OAuthToken, User
from drivesync.scope import user_scope
from drivesync.services import integrations
from drivesync.vault import Vault, new_key
from tests.conftest import PASSWORD, db_rows


def test_users_create_and_validation(app):
    """`flask users create` makes an account and refuses a bad one with a clear message."""
    runner = app.test_cli_runner()
    r = runner.invoke(args=["users", "create", "New@Example.com", "--password", PASSWORD])
    assert r.exit_code == 0 and "created user" in r.output
    assert [u.email for u in db_rows(app, User)] == ["new@example.com"]
    r = runner.invoke(args=["users", "create", "not-an-email", "--password", PASSWORD])
    assert r.exit_code != 0 and "valid e-mail" in r.output


def test_tokens_new_key_prints_a_usable_key(app):
    """`flask tokens new-key` prints a key the vault accepts."""
    r = app.test_cli_runner().invoke(args=["tokens", "new-key"])
    assert r.exit_code == 0
    Vault(r.output.strip())


def test_tokens_rotate_key(app, make_user):
    """`flask tokens rotate-key` re-encrypts stored tokens with the first configured key."""
    old = new_key()
    app.config["TOKEN_KEYS"] = old
    uid = make_user()
    with app.app_context(), user_scope(uid):
        integration = Integration(user_id=uid, provider="onedrive")
        db.session.add(integration)
        db.session.flush()
        integrations.save_token(
            integration, {"access_token": "AT", "refresh_token": "RT", "expires_in": 3600}
        )
        db.session.commit()
    new = new_key()
    app.config["TOKEN_KEYS"] = f"{new},{old}"
    r = app.test_cli_runner().invoke(args=["tokens", "rotate-key"])
    assert r.exit_code == 0 and "re-encrypted 1 of 1" in r.output
    [row] = db_rows(app, OAuthToken, uid)
    assert row.key_id == Vault(new).current_key_id
    r = app.test_cli_runner().invoke(args=["tokens", "rotate-key"])
    assert "re-encrypted 0 of 1" in r.output


@pytest.mark.parametrize(
    "args", [["sync", "status", "nobody@example.com"], ["sync", "run", "nobody@example.com"]]
)
def test_sync_commands_refuse_unknown_users(app, args: list[Any]):
    """The sync commands name the problem when the user does not exist."""
    r = app.test_cli_runner().invoke(args=args)
    assert r.exit_code != 0 and "no user with e-mail" in r.output


def test_sync_status_counts(app, make_user, make_file):
    """`flask sync status` prints the user's files per sync state."""
    uid = make_user("counted@example.com")
    make_file(uid, "a.txt")
    make_file(uid, "b.txt")
    r = app.test_cli_runner().invoke(args=["sync", "status", "counted@example.com"])
    assert r.exit_code == 0
    assert "not_synced  2" in r.output and "synced      0" in r.output


def test_sync_run_without_connection_says_so(app, make_user, make_file):
    """`flask sync run` for a user without OneDrive fails with the service's message."""
    uid = make_user("lonely@example.com")
    make_file(uid)
    r = app.test_cli_runner().invoke(args=["sync", "run", "lonely@example.com"])
    assert r.exit_code != 0


def test_db_grant_refuses_sqlite(app):
    """`flask db-grant` explains that SQLite has no roles."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        pytest.skip("db-grant is exercised on PostgreSQL by the suite's own setup")
    r = app.test_cli_runner().invoke(args=["db-grant", "drivesync_app"])
    assert r.exit_code != 0 and "PostgreSQL" in r.output
