"""Fixtures for the data-rights tests: signed-in clients and direct looks at the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from drivesync.extensions import db
from drivesync.models import AuditEvent, FileEvent
from drivesync.scope import user_scope
from tests.conftest import sign_in_as


@pytest.fixture
def signed_in(app: Flask) -> Callable[[int], FlaskClient]:
    """Return a new test client signed in as the given user."""

    def _client(user_id: int) -> FlaskClient:
        client = app.test_client()
        sign_in_as(client, user_id)  # a real server-side session, as a sign-in opens
        return client

    return _client


def audit_rows(app: Flask, user_id: int | None = None) -> list[dict[str, Any]]:
    """Return audit entries (the user's own under RLS, all of them on SQLite) as dicts."""
    with app.app_context(), user_scope(user_id):
        query = db.select(AuditEvent).order_by(AuditEvent.id)
        if user_id is not None:
            query = query.where(AuditEvent.user_id == user_id)
        return [
            {c.key: getattr(e, c.key) for c in AuditEvent.__table__.columns}
            for e in db.session.execute(query).scalars()
        ]


def history_rows(app: Flask, user_id: int, file_id: int) -> list[FileEvent]:
    """Return a file's history rows, oldest first."""
    with app.app_context(), user_scope(user_id):
        rows = db.session.execute(
            db.select(FileEvent)
            .where(FileEvent.user_id == user_id, FileEvent.file_id == file_id)
            .order_by(FileEvent.id)
        ).scalars()
        out = list(rows)
        db.session.expunge_all()
        return out
