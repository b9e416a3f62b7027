"""Failure notices go out by e-mail once per episode, through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from drivesync.extensions import db
from drivesync.models import User
from drivesync.services import integrations, scheduler
from tests.security.test_password_reset import Inbox, inbox  # noqa: F401 - the SMTP fixture


def test_reconnect_needed_mails_the_user_once_per_episode(
    app: Flask,
    user: int,
    ctx: None,
    inbox: Inbox,  # noqa: F811 - the fixture imported above
) -> None:
    """A connection needing a reconnect sends one mail however many ticks see it."""
    integrations.mark_needs_reauth(user, "revoked")
    for _ in range(3):
        scheduler.tick()
    [message] = inbox.wait(1)
    address = db.session.get(User, user)
    assert address is not None and message["To"] == address.email
    assert "reconnect OneDrive" in str(message["Subject"])
    scheduler.tick()
    assert len(inbox.messages) == 1


@pytest.fixture
def app_overrides(inbox: Inbox) -> dict[str, Any]:  # noqa: F811
    """Send mail to the test's SMTP server."""
    return {"SMTP_URL": f"smtp://127.0.0.1:{inbox.port}"}  # type: ignore[attr-defined]
