"""Fixtures for the engine's unit tests: a fake drive and a connected user."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from drivesync.extensions import db
from drivesync.models import Integration
from drivesync.scope import user_scope
from tests.fakes import FOLDER_ID, FakeDrive


@pytest.fixture
def fake() -> FakeDrive:
    """An empty in-memory OneDrive."""
    return FakeDrive()


@pytest.fixture
def link_onedrive(app: Flask) -> Callable[..., None]:
    """Give a user an OneDrive integration (active unless told otherwise; other columns too)."""

    def _connect(user_id: int, status: str = "active", **values: Any) -> None:
        with app.app_context(), user_scope(user_id):
            db.session.add(
                Integration(
                    user_id=user_id,
                    status=status,
                    folder_id=FOLDER_ID,
                    drive_type="personal",
                    account_email="a@example.com",
                    **values,
                )
            )
            db.session.commit()

    return _connect


@pytest.fixture
def user(make_user: Callable[..., int], link_onedrive: Callable[..., None]) -> int:
    """A connected user."""
    uid = make_user()
    link_onedrive(uid)
    return uid


@pytest.fixture
def ctx(app: Flask, user: int) -> Iterator[None]:
    """An app context scoped to ``user`` for calling services directly."""
    with app.app_context(), user_scope(user):
        yield
        db.session.rollback()
