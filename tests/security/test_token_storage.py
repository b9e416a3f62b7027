"""OAuth tokens at rest: encrypted, bound to their row, deferred, never in a repr or a dump."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy
from flask import Flask
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import undefer

from drivesync.extensions import db
from drivesync.models import Integration, OAuthToken
from drivesync.scope import user_scope
from drivesync.services import integrations
from drivesync.vault import VaultError, new_key
from tests.conftest import PG_OWNER_URL

TOKEN_COLUMNS = {"access_token_encrypted", "refresh_token_encrypted"}
needs_postgres = pytest.mark.skipif(
    not PG_OWNER_URL, reason="set DRIVESYNC_TEST_POSTGRES_URL to inspect the PostgreSQL database"
)


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """Use an explicit token key, and a client id so a refresh can be simulated."""
    return {"TOKEN_KEYS": new_key(), "MS_CLIENT_ID": "test-client"}


def _secret(kind: str) -> str:
    """Return a distinctive token value that cannot appear anywhere by chance."""
    return f"{kind}-{secrets.token_urlsafe(24)}"


def _connect(app: Flask, user_id: int) -> tuple[int, str, str]:
    """Store an integration with fresh tokens for the user; return (id, access, refresh)."""
    access, refresh = _secret("access"), _secret("refresh")
    with app.app_context(), user_scope(user_id):
        integration = Integration(user_id=user_id, provider="onedrive", account_name="Alice")
        db.session.add(integration)
        db.session.flush()
        integrations.save_token(
            integration, {"access_token": access, "refresh_token": refresh, "expires_in": 3600}
        )
        db.session.commit()
        return integration.id, access, refresh


def _key_id(app: Flask) -> str:
    """Return the id of the key that currently encrypts."""
    with app.app_context():
        return integrations.vault().current_key_id


def _raw_token_row(app: Flask, user_id: int) -> dict[str, Any]:
    """Return the user's oauth_tokens row exactly as stored, every column."""
    with app.app_context(), user_scope(user_id):
        row = (
            db.session.execute(
                text("SELECT * FROM oauth_tokens WHERE user_id = :u"), {"u": user_id}
            )
            .mappings()
            .one()
        )
        return dict(row)


def _tokens_through_the_app(app: Flask, user_id: int, integration_id: int) -> tuple[str, str]:
    """Return (access, refresh) as the app decrypts them: access directly, refresh by refreshing."""
    seen: list[str] = []

    def refresher(settings: Any, refresh_token: str) -> dict[str, Any]:
        seen.append(refresh_token)
        return {
            "access_token": _secret("access"),
            "refresh_token": refresh_token,
            "expires_in": 3600,
        }

    with app.app_context(), user_scope(user_id):
        access = integrations.TokenProvider(user_id, integration_id)()
        integrations.TokenProvider(user_id, integration_id, refresher)(force_refresh=True)
    return access, seen[0]


def test_token_columns_hold_no_clear_text(app: Flask, make_user: Callable[..., int]):
    """Neither token appears in any column of its row; both columns hold vault ciphertext."""
    user = make_user()
    _, access, refresh = _connect(app, user)
    row = _raw_token_row(app, user)
    everything = " ".join(str(v) for v in row.values())
    assert access not in everything and refresh not in everything
    kid = _key_id(app)
    for column in TOKEN_COLUMNS:
        assert row[column].startswith(f"v1.{kid}.")
    assert row["access_token_encrypted"] != row["refresh_token_encrypted"]


@needs_postgres
def test_no_table_holds_a_token_in_clear(app: Flask, make_user: Callable[..., int]):
    """A SELECT * of every table, as the owner and in the user's scope, shows no token in clear."""
    user = make_user()
    _, access, refresh = _connect(app, user)
    ciphertext = _raw_token_row(app, user)["access_token_encrypted"]
    engine = create_engine(PG_OWNER_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('app.user_id', :u, true)"), {"u": str(user)})
            dump = []
            for table in sqlalchemy.inspect(conn).get_table_names():
                rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()  # noqa: S608
                dump.extend(str(tuple(r)) for r in rows)
    finally:
        engine.dispose()
    everything = "\n".join(dump)
    assert ciphertext in everything  # the token row was read, so its absence below means something
    assert access not in everything and refresh not in everything


@needs_postgres
@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
def test_pg_dump_holds_no_token_in_clear(app: Flask, make_user: Callable[..., int]):
    """A pg_dump of the database (schema and data) contains the ciphertext but no token."""
    user = make_user()
    _, access, refresh = _connect(app, user)
    ciphertext = _raw_token_row(app, user)["access_token_encrypted"]
    url = make_url(PG_OWNER_URL)
    env = {**os.environ, "PGOPTIONS": f"-c app.user_id={user}"}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    # FORCE row-level security applies to the owner too: dump what the user's scope may see.
    dump = subprocess.run(
        [
            "pg_dump",
            "--no-owner",
            "--enable-row-security",
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "",
            url.database or "",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "COPY public.oauth_tokens" in dump
    assert ciphertext in dump
    assert access not in dump and refresh not in dump


def test_ciphertext_copied_to_another_row_does_not_decrypt(
    app: Flask, make_user: Callable[..., int]
):
    """A's ciphertext pasted into B's row is refused: the vault binds each token to its row."""
    a, b = make_user(), make_user()
    _, access_a, _ = _connect(app, a)
    integration_b, access_b, _ = _connect(app, b)
    stolen = _raw_token_row(app, a)
    with app.app_context(), user_scope(b):
        assert integrations.TokenProvider(b, integration_b)() == access_b
        db.session.execute(
            text(
                "UPDATE oauth_tokens SET access_token_encrypted = :a, "
                "refresh_token_encrypted = :r WHERE integration_id = :i"
            ),
            {
                "a": stolen["access_token_encrypted"],
                "r": stolen["refresh_token_encrypted"],
                "i": integration_b,
            },
        )
        db.session.commit()
        with pytest.raises(VaultError) as caught:
            integrations.TokenProvider(b, integration_b)()
    assert access_a not in str(caught.value)


def test_token_columns_are_deferred(app: Flask, make_user: Callable[..., int]):
    """Loading a token row, directly or through its integration, leaves the ciphertext unloaded."""
    user = make_user()
    integration_id, _, _ = _connect(app, user)
    with app.app_context(), user_scope(user):
        row = db.session.execute(db.select(OAuthToken)).scalar_one()
        assert TOKEN_COLUMNS <= sqlalchemy.inspect(row).unloaded
        db.session.expunge_all()
        integration = db.session.get(Integration, integration_id)
        assert integration is not None and integration.token is not None
        assert TOKEN_COLUMNS <= sqlalchemy.inspect(integration.token).unloaded
        assert integrations.token_exists(user)


def test_repr_shows_no_token(app: Flask, make_user: Callable[..., int]):
    """The repr of the token row and of its integration names neither token nor ciphertext."""
    user = make_user()
    integration_id, access, refresh = _connect(app, user)
    stored = _raw_token_row(app, user)
    with app.app_context(), user_scope(user):
        integration = db.session.get(Integration, integration_id)
        assert integration is not None
        row = db.session.execute(
            db.select(OAuthToken).options(
                undefer(OAuthToken.access_token_encrypted),
                undefer(OAuthToken.refresh_token_encrypted),
            )
        ).scalar_one()
        assert row.access_token_encrypted == stored["access_token_encrypted"]  # loaded
        shown = " ".join([repr(row), str(row), repr(integration), str(integration)])
    for secret in (access, refresh, *(stored[c] for c in TOKEN_COLUMNS)):
        assert secret not in shown


def test_rotate_token_keys_reencrypts_every_row(app: Flask, make_user: Callable[..., int]):
    """After a new key is prepended, rotation re-encrypts every user's tokens to the same values."""
    users = [make_user(), make_user()]
    connected = {u: _connect(app, u) for u in users}
    old_kid = _key_id(app)
    fresh = new_key()
    app.config["TOKEN_KEYS"] = f"{fresh},{app.config['TOKEN_KEYS']}"
    new_kid = _key_id(app)
    assert new_kid != old_kid
    with app.app_context():  # as `flask tokens rotate-key` runs: no user in scope
        assert integrations.rotate_token_keys(batch=1) == (2, 2)
        assert integrations.rotate_token_keys() == (0, 2)
    for user, (integration_id, access, refresh) in connected.items():
        row = _raw_token_row(app, user)
        assert row["key_id"] == new_kid
        for column in TOKEN_COLUMNS:
            assert row[column].startswith(f"v1.{new_kid}.")
        assert _tokens_through_the_app(app, user, integration_id) == (access, refresh)
    app.config["TOKEN_KEYS"] = fresh  # the old key can now be removed from the list
    integration_id, _, _ = connected[users[0]]
    with app.app_context(), user_scope(users[0]):
        assert integrations.TokenProvider(users[0], integration_id)()
