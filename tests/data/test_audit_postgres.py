"""PostgreSQL: the app's role may only append to and read its own part of the audit log."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from drivesync import events
from drivesync.extensions import db
from drivesync.scope import user_scope
from tests.conftest import PG_APP_URL, PG_OWNER_URL

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_OWNER_URL, reason="set DRIVESYNC_TEST_POSTGRES_URL"),
    pytest.mark.skipif(
        PG_APP_URL == PG_OWNER_URL,
        reason="set DRIVESYNC_TEST_POSTGRES_APP_URL to the app's NOSUPERUSER NOBYPASSRLS role",
    ),
]


@pytest.fixture
def entries(app, make_user) -> tuple[int, int]:
    """Two users with two entries each (account created, signed in), written as the app does."""
    a, b = make_user(), make_user()
    with app.test_request_context("/login", method="POST"):
        events.signed_in.send(None, user_id=a)
        events.signed_in.send(None, user_id=b)
        db.session.commit()
    return a, b


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET action = 'forged'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
    ],
)
def test_app_role_cannot_alter_the_audit_log(app, entries, statement):
    """UPDATE, DELETE and TRUNCATE by the app's role fail with a permission error."""
    a, _ = entries
    engine = create_engine(PG_APP_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('app.user_id', :u, true)"), {"u": str(a)})
            with pytest.raises(ProgrammingError, match="permission denied"):
                conn.execute(text(statement))
    finally:
        engine.dispose()
    owner = create_engine(PG_OWNER_URL)
    with owner.connect() as conn:
        assert (
            conn.execute(
                text("SELECT count(*) FROM audit_events WHERE action <> 'forged'")
            ).scalar_one()
            == 4
        )
    owner.dispose()


def test_app_role_reads_only_the_scoped_users_entries(app, entries):
    """Under RLS a user's scope sees their own entries only, and no scope sees none."""
    a, b = entries
    engine = create_engine(PG_APP_URL)
    try:
        for scope, expected in ((a, [a, a]), (b, [b, b]), (None, [])):
            with engine.begin() as conn:
                conn.execute(
                    text("SELECT set_config('app.user_id', :u, true)"),
                    {"u": "" if scope is None else str(scope)},
                )
                assert (
                    list(
                        conn.execute(text("SELECT user_id FROM audit_events ORDER BY id")).scalars()
                    )
                    == expected
                )
    finally:
        engine.dispose()


def test_pseudonymise_function_only_touches_the_scoped_user(app, entries):
    """The SECURITY DEFINER function refuses to pseudonymise a user other than the scoped one."""
    a, b = entries
    with app.app_context(), user_scope(a):
        changed = db.session.execute(
            text("SELECT audit_pseudonymise(:u, 'h')"), {"u": b}
        ).scalar_one()
        db.session.commit()
    assert changed == 0
    owner = create_engine(PG_OWNER_URL)
    with owner.connect() as conn:
        assert sorted(conn.execute(text("SELECT user_id FROM audit_events")).scalars()) == sorted(
            [a, a, b, b]
        )
    owner.dispose()
