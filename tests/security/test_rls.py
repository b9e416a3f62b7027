"""PostgreSQL row-level security: the app's role sees and changes only the scoped user's rows."""

# SQL below interpolates only table and column names from OWNER_COLUMNS, never input.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import ProgrammingError

from drivesync.extensions import db
from drivesync.models import File, Integration, SyncRun
from drivesync.scope import user_scope
from drivesync.services import accounts, integrations
from tests.conftest import PG_APP_URL, PG_OWNER_URL

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_OWNER_URL, reason="set DRIVESYNC_TEST_POSTGRES_URL to run RLS tests"),
    pytest.mark.skipif(
        PG_APP_URL == PG_OWNER_URL,
        reason="set DRIVESYNC_TEST_POSTGRES_APP_URL to the app's NOSUPERUSER NOBYPASSRLS role",
    ),
]

# table -> the column naming the user a row belongs to (as in the RLS migration)
OWNER_COLUMNS = {
    "integrations": "user_id",
    "oauth_tokens": "user_id",
    "files": "owner_id",
    "sync_runs": "user_id",
    "user_sessions": "user_id",
}
TABLES = list(OWNER_COLUMNS)


@pytest.fixture
def users(
    app: Flask, make_user: Callable[..., int], make_file: Callable[..., int]
) -> tuple[int, int]:
    """Create users A and B, each with one row in every RLS table; return their ids."""
    ids = (make_user(), make_user())
    for uid in ids:
        make_file(uid, f"user{uid}.txt", f"bytes of {uid}".encode())
        with app.app_context(), user_scope(uid):
            integration = Integration(user_id=uid, provider="onedrive")
            db.session.add_all([integration, SyncRun(user_id=uid)])
            db.session.flush()
            integrations.save_token(
                integration, {"access_token": f"at-{uid}", "refresh_token": f"rt-{uid}"}
            )
            db.session.commit()
            accounts.start_session(uid)
    return ids


@pytest.fixture
def app_engine(app: Flask) -> Iterator[Engine]:
    """An engine connected as the app's role, outside the app (no scope event)."""
    engine = create_engine(PG_APP_URL)
    yield engine
    engine.dispose()


def _scope(conn: Connection, user_id: int | str | None) -> None:
    """Set ``app.user_id`` for the rest of the connection's current transaction."""
    value = "" if user_id is None else str(user_id)
    conn.execute(text("SELECT set_config('app.user_id', :u, true)"), {"u": value})


def _owners(conn: Connection, table: str) -> list[int]:
    """Return the owner column of every row of ``table`` the connection can see."""
    col = OWNER_COLUMNS[table]
    return list(conn.execute(text(f"SELECT {col} FROM {table}")).scalars())


def _visible(engine: Engine, table: str, user_id: int | None) -> list[int]:
    """Return the owners of the rows of ``table`` visible in a transaction scoped to ``user_id``."""
    with engine.begin() as conn:
        _scope(conn, user_id)
        return _owners(conn, table)


def test_app_role_cannot_bypass_rls(app_engine: Engine):
    """The app's role is neither superuser nor BYPASSRLS, owns no table and cannot turn RLS off."""
    with app_engine.connect() as conn:
        role = conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        ).one()
        assert (role.rolsuper, role.rolbypassrls) == (False, False)
        owned = (
            conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tableowner = current_user"
                )
            )
            .scalars()
            .all()
        )
        assert owned == []
        conn.rollback()
        with pytest.raises(ProgrammingError, match="must be owner"):
            conn.execute(text("ALTER TABLE files DISABLE ROW LEVEL SECURITY"))
        conn.rollback()
        conn.execute(text("SET LOCAL row_security = off"))
        with pytest.raises(ProgrammingError, match="row-level security"):
            conn.execute(text("SELECT count(*) FROM files"))
        conn.rollback()


def test_rls_is_enabled_and_forced(app_engine: Engine):
    """RLS is enabled and forced on the per-user tables, each with one policy; not on users."""
    with app_engine.connect() as conn:
        flags = {
            r.relname: (r.relrowsecurity, r.relforcerowsecurity)
            for r in conn.execute(
                text(
                    "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
                )
            )
        }
        policies = conn.execute(
            text("SELECT tablename, cmd FROM pg_policies WHERE schemaname = 'public'")
        ).all()
    assert {t: flags[t] for t in TABLES} == dict.fromkeys(TABLES, (True, True))
    assert flags["users"] == (False, False)
    # Later tables (audit_events, file_events, export_jobs) have their own tests.
    assert sorted(p for p in policies if p[0] in TABLES) == sorted((t, "ALL") for t in TABLES)


@pytest.mark.parametrize("table", TABLES)
def test_unscoped_select_returns_no_rows(app_engine: Engine, users: tuple[int, int], table: str):
    """Without ``app.user_id`` (never set, or set empty) a plain SELECT sees zero rows."""
    a, b = users
    assert _visible(app_engine, table, a) == [a]  # the rows exist
    assert _visible(app_engine, table, b) == [b]
    with app_engine.connect() as conn:
        assert conn.execute(text("SELECT current_setting('app.user_id', true)")).scalar() in (
            None,
            "",
        )
        assert conn.execute(text(f"SELECT * FROM {table}")).all() == []
        conn.rollback()
    assert _visible(app_engine, table, None) == []


@pytest.mark.parametrize("table", TABLES)
def test_scoped_select_returns_only_own_rows(
    app_engine: Engine, users: tuple[int, int], table: str
):
    """Scoped to A, even a SELECT with no WHERE clause returns A's rows only."""
    a, b = users
    with app_engine.begin() as conn:
        _scope(conn, a)
        rows = conn.execute(text(f"SELECT * FROM {table}")).mappings().all()
    assert [r[OWNER_COLUMNS[table]] for r in rows] == [a]
    assert _visible(app_engine, table, 999_999) == []


def _copy_row_sql(table: str) -> str:
    """Return an INSERT that copies a row of ``table`` (by id) with another owner."""
    owner = OWNER_COLUMNS[table]
    cols = [c.name for c in db.metadata.tables[table].columns if c.name not in ("id", owner)]
    return (
        f"INSERT INTO {table} ({owner}, {', '.join(cols)}) "
        f"SELECT :new_owner, {', '.join(cols)} FROM {table} WHERE {owner} = :from_owner"
    )


@pytest.mark.parametrize("table", TABLES)
def test_insert_for_another_user_is_refused(app_engine: Engine, users: tuple[int, int], table: str):
    """Scoped to A, inserting a row that belongs to B violates the policy's WITH CHECK."""
    a, b = users
    with app_engine.connect() as conn:
        _scope(conn, a)
        with pytest.raises(ProgrammingError, match="violates row-level security policy"):
            conn.execute(text(_copy_row_sql(table)), {"new_owner": b, "from_owner": a})
        conn.rollback()
    assert _visible(app_engine, table, b) == [b]


@pytest.mark.parametrize("table", TABLES)
def test_update_and_delete_of_another_users_rows_affect_nothing(
    app_engine: Engine, users: tuple[int, int], table: str
):
    """Scoped to A, UPDATE and DELETE aimed at B's rows match none; handing A's row to B fails."""
    a, b = users
    col = OWNER_COLUMNS[table]
    with app_engine.begin() as conn:
        _scope(conn, a)
        changed = conn.execute(text(f"UPDATE {table} SET {col} = {col} WHERE {col} = :b"), {"b": b})
        deleted = conn.execute(text(f"DELETE FROM {table} WHERE {col} = :b"), {"b": b})
        assert (changed.rowcount, deleted.rowcount) == (0, 0)
        assert conn.execute(text(f"DELETE FROM {table}")).rowcount == 1  # A's only
    with app_engine.connect() as conn:
        _scope(conn, b)
        with pytest.raises(ProgrammingError, match="violates row-level security policy"):
            conn.execute(text(f"UPDATE {table} SET {col} = :a"), {"a": a})
        conn.rollback()
    assert _visible(app_engine, table, b) == [b]
    assert _visible(app_engine, table, a) == []


def test_scope_is_transaction_local(app_engine: Engine, users: tuple[int, int]):
    """``set_config(..., true)`` ends with its transaction: the next one sees no rows."""
    a, _ = users
    with app_engine.connect() as conn:
        _scope(conn, a)
        assert _owners(conn, "files") == [a]
        conn.commit()
        assert conn.execute(text("SELECT current_setting('app.user_id', true)")).scalar() == ""
        assert _owners(conn, "files") == []
        conn.rollback()
        _scope(conn, a)
        conn.rollback()
        assert _owners(conn, "files") == []
        conn.rollback()


def test_deleting_a_user_still_cascades_to_their_rows(app_engine: Engine, users: tuple[int, int]):
    """Foreign-key cascades run as the table owner without FORCE, so RLS does not strand rows."""
    a, b = users
    with app_engine.begin() as conn:
        _scope(conn, a)
        conn.execute(text("DELETE FROM users WHERE id = :a"), {"a": a})
    for table in TABLES:
        assert _visible(app_engine, table, a) == []
        assert _visible(app_engine, table, b) == [b]


def _files(app: Flask, user_id: int | None) -> list[Any]:
    """Return (owner, name) of every file the app's session sees in ``user_id``'s scope."""
    with app.app_context(), user_scope(user_id):
        rows = db.session.execute(db.select(File).order_by(File.id)).scalars()
        return [(f.owner_id, f.original_name) for f in rows]


def test_app_session_without_owner_filter_sees_only_scoped_files(
    app: Flask, make_user: Callable[..., int], make_file: Callable[..., int]
):
    """Through the app, a query with no owner filter returns only the scoped user's files."""
    a, b = make_user(), make_user()
    make_file(a, "a1.txt")
    make_file(a, "a2.txt")
    make_file(b, "b1.txt")
    assert _files(app, a) == [(a, "a1.txt"), (a, "a2.txt")]
    assert _files(app, b) == [(b, "b1.txt")]
    assert _files(app, None) == []
    with app.app_context(), user_scope(a):
        assert db.session.get(File, 3) is None  # B's file, fetched by primary key
        assert db.session.execute(db.select(db.func.count()).select_from(File)).scalar() == 2
