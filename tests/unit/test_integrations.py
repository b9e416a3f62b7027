"""Token refresh: ahead of expiry, after a 401, single-flight, and invalid_grant."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from drivesync.extensions import db
from drivesync.graph.errors import AuthError
from drivesync.models import Integration, OAuthToken, utcnow
from drivesync.scope import user_scope
from drivesync.services import integrations


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """A configured (fake) Microsoft app; no request ever leaves the process."""
    return {"MS_CLIENT_ID": "client", "MS_CLIENT_SECRET": "secret"}


def store_tokens(
    app: Flask,
    make_user: Callable[..., int],
    refresh_token: str = "R0",  # noqa: S107 - a test value, not a credential
    expires_in: int = 3600,
) -> tuple[int, int]:
    """Create a user with an integration and stored tokens; return (user id, integration id)."""
    uid = make_user()
    with app.app_context(), user_scope(uid):
        integration = Integration(user_id=uid, provider="onedrive", folder_id="F")
        db.session.add(integration)
        db.session.flush()
        integrations.save_token(
            integration,
            {"access_token": "A0", "refresh_token": refresh_token, "expires_in": expires_in},
        )
        db.session.commit()
        return uid, integration.id


@pytest.fixture
def connected(app: Flask, make_user: Callable[..., int]) -> tuple[int, int]:
    """A user with an integration whose access token expires in an hour."""
    return store_tokens(app, make_user)


class Refresher:
    """A stand-in for oauth.refresh that rotates tokens and counts calls."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.delay, self.error = delay, error
        self._lock = threading.Lock()

    def __call__(self, settings: Any, refresh_token: str) -> dict[str, Any]:
        with self._lock:
            self.calls.append(refresh_token)
            n = len(self.calls)
        time.sleep(self.delay)
        if self.error:
            raise self.error
        return {"access_token": f"A{n}", "refresh_token": f"R{n}", "expires_in": 3600}


def _expire(app: Flask, uid: int, in_seconds: int) -> None:
    with app.app_context(), user_scope(uid):
        row = db.session.execute(db.select(OAuthToken)).scalar_one()
        row.expires_at = utcnow() + timedelta(seconds=in_seconds)
        db.session.commit()


def _tokens(app: Flask, uid: int, iid: int) -> tuple[str, str | None]:
    with app.app_context(), user_scope(uid):
        row = integrations._load_token_row(iid, lock=False)
        v = integrations.vault()
        return (
            v.decrypt(row.access_token_encrypted, f"oauth_tokens:{iid}:a"),
            v.decrypt(row.refresh_token_encrypted, f"oauth_tokens:{iid}:r"),
        )


def test_fresh_token_is_used_as_is(app, connected):
    """A token valid for more than five minutes is handed out without a refresh."""
    uid, iid = connected
    refresher = Refresher()
    with app.app_context(), user_scope(uid):
        assert integrations.TokenProvider(uid, iid, refresher)() == "A0"
    assert refresher.calls == []


def test_refresh_ahead_of_expiry_saves_both_tokens(app, connected):
    """Within the five-minute margin the token is refreshed and the rotated pair stored."""
    uid, iid = connected
    _expire(app, uid, 120)
    refresher = Refresher()
    with app.app_context(), user_scope(uid):
        assert integrations.TokenProvider(uid, iid, refresher)() == "A1"
    assert refresher.calls == ["R0"]
    assert _tokens(app, uid, iid) == ("A1", "R1")


def test_forced_refresh_after_401_happens_once(app, connected):
    """After a 401 the provider refreshes; a second provider that got the old token reuses it."""
    uid, iid = connected
    refresher = Refresher()
    with app.app_context(), user_scope(uid):
        first = integrations.TokenProvider(uid, iid, refresher)
        second = integrations.TokenProvider(uid, iid, refresher)
        assert first() == second() == "A0"
        assert first(True) == "A1"  # Graph refused A0
        assert second(True) == "A1"  # also refused A0, but someone already refreshed
    assert refresher.calls == ["R0"]


def test_single_flight_under_threads(app, connected):
    """Eight workers meeting an expired token cause exactly one refresh."""
    uid, iid = connected
    _expire(app, uid, -10)
    refresher = Refresher(delay=0.1)
    got: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        with app.app_context(), user_scope(uid):
            barrier.wait()
            got.append(integrations.TokenProvider(uid, iid, refresher)())
            db.session.remove()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refresher.calls == ["R0"]
    assert got == ["A1"] * 8


def test_invalid_grant_marks_reauth_and_stops(app, connected):
    """invalid_grant flags the integration; later clients are refused without calling Microsoft."""
    uid, iid = connected
    _expire(app, uid, -10)
    refresher = Refresher(error=AuthError("Reconnect OneDrive.", code="invalid_grant"))
    with app.app_context(), user_scope(uid):
        with pytest.raises(AuthError):
            integrations.TokenProvider(uid, iid, refresher)()
        integration = db.session.get(Integration, iid)
        assert integration.status == "needs_reauth" and integration.status_reason
        with pytest.raises(integrations.ReauthRequired):
            integrations.graph_client_for(uid)
    assert refresher.calls == ["R0"]


def test_missing_refresh_token_needs_reauth(app, connected):
    """Without a refresh token (no offline_access), an expired token means reconnecting."""
    uid, iid = connected
    with app.app_context(), user_scope(uid):
        row = db.session.execute(db.select(OAuthToken)).scalar_one()
        row.refresh_token_encrypted = None
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
        with pytest.raises(AuthError):
            integrations.TokenProvider(uid, iid, Refresher())()
        assert db.session.get(Integration, iid).status == "needs_reauth"


def test_not_connected_and_unconfigured(app, make_user):
    """A user without an integration gets NotConnected; a server without a client id says so."""
    uid = make_user()
    with app.app_context(), user_scope(uid):
        with pytest.raises(integrations.NotConnected):
            integrations.graph_client_for(uid)
        app.config["MS_CLIENT_ID"] = ""
        with pytest.raises(integrations.ServiceError, match="not configured"):
            integrations.oauth_settings("http://x/cb")
