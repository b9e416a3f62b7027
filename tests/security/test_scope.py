"""The RLS scope follows user_scope even inside a transaction that is already open."""

from __future__ import annotations

import pytest

from drivesync.extensions import db
from drivesync.models import File, User
from drivesync.scope import user_scope
from tests.conftest import PG_OWNER_URL

pytestmark = pytest.mark.postgres


def test_scope_change_reaches_an_open_transaction(app, make_user, make_file):
    """A lookup before user_scope opens a transaction; the scope still applies inside it."""
    if not PG_OWNER_URL:
        pytest.skip("set DRIVESYNC_TEST_POSTGRES_URL to run PostgreSQL tests")
    a, b = make_user("a@example.com"), make_user("b@example.com")
    make_file(a, "a.txt")
    make_file(b, "b.txt")
    with app.app_context():
        user = db.session.execute(db.select(User).where(User.id == a)).scalar_one()
        assert db.session().in_transaction()  # begun without a user: RLS shows no files yet
        assert db.session.execute(db.select(File)).scalars().all() == []
        with user_scope(user.id):
            names = [f.original_name for f in db.session.execute(db.select(File)).scalars()]
        assert names == ["a.txt"]
        assert db.session.execute(db.select(File)).scalars().all() == []  # back to nobody
        db.session.rollback()
