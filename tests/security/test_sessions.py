"""Sessions that end: sign-out, password change and sign-out-everywhere end them on the server.

Probe findings M1 (cookies that could never be revoked), I6 (session not regenerated at sign-in),
L6 (remember cookie without SameSite) and L7 (remember-cookie requests unscoped under RLS).
"""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from flask.testing import FlaskClient

from drivesync.extensions import db
from drivesync.models import utcnow
from drivesync.scope import user_scope
from tests.conftest import PASSWORD, PG_OWNER_URL, csrf_token

NEW_PASSWORD = "a brand new passphrase"


def sign_in(client: FlaskClient, email: str, password: str = PASSWORD, remember: bool = False):
    """Sign in through the form; return the response."""
    token = csrf_token(client, "/login")
    data = {"csrf_token": token, "email": email, "password": password}
    if remember:
        data["remember"] = "on"
    return client.post("/login", data=data)


def cookie(client: FlaskClient, name: str) -> str | None:
    """Return a cookie's value in the client's jar."""
    c = client.get_cookie(name)
    return c.value if c else None


def only_cookie(app, name: str, value: str) -> FlaskClient:
    """A fresh client that holds nothing but one cookie (a stolen copy)."""
    thief = app.test_client()
    thief.set_cookie(name, value)
    return thief


def is_signed_in(client: FlaskClient) -> bool:
    """Return whether the client's cookies open the library."""
    return client.get("/library/").status_code == 200


@pytest.fixture
def bob(make_user) -> int:
    """A user with the default password."""
    return make_user("bob@example.com")


def test_sign_out_ends_the_session_and_remember_cookie_on_the_server(app, client, bob):
    """Copies of the session and remember-me cookies taken before sign-out are refused after."""
    assert sign_in(client, "bob@example.com", remember=True).status_code == 303
    stolen_session, stolen_remember = cookie(client, "session"), cookie(client, "remember_token")
    assert stolen_session and stolen_remember
    assert is_signed_in(only_cookie(app, "session", stolen_session))
    assert is_signed_in(only_cookie(app, "remember_token", stolen_remember))
    client.post("/logout", data={"csrf_token": csrf_token(client)})
    assert not is_signed_in(client)
    assert not is_signed_in(only_cookie(app, "session", stolen_session))
    assert not is_signed_in(only_cookie(app, "remember_token", stolen_remember))


def test_remember_cookie_is_new_at_every_sign_in_and_lax(app, bob):
    """Each sign-in gets a different remember-me cookie, SameSite=Lax, expiring as configured."""
    first, second = app.test_client(), app.test_client()
    r = sign_in(first, "bob@example.com", remember=True)
    sign_in(second, "bob@example.com", remember=True)
    assert cookie(first, "remember_token") != cookie(second, "remember_token")
    header = next(h for h in r.headers.getlist("Set-Cookie") if h.startswith("remember_token="))
    assert "SameSite=Lax" in header and "HttpOnly" in header
    assert app.config["REMEMBER_COOKIE_DURATION"] == timedelta(days=30)


def test_remember_cookie_expires_on_the_server(app, client, bob):
    """A remember-me cookie whose session has passed its expiry signs nobody in."""
    sign_in(client, "bob@example.com", remember=True)
    remember = cookie(client, "remember_token")
    assert is_signed_in(only_cookie(app, "remember_token", remember))
    from drivesync.models import UserSession

    with app.app_context(), user_scope(bob):
        for row in db.session.execute(db.select(UserSession)).scalars():
            row.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    assert not is_signed_in(only_cookie(app, "remember_token", remember))


def test_a_bare_user_id_in_a_session_cookie_is_refused(app, client, bob):
    """A signed session that names a user without a live session (old format) signs no one in."""
    with client.session_transaction() as sess:
        sess["_user_id"] = str(bob)
    assert not is_signed_in(client)


def test_session_and_csrf_secret_are_regenerated_at_sign_in(app, client, bob):
    """A CSRF token fetched before sign-in is refused afterwards (probe I6)."""
    before = csrf_token(client, "/login")
    sign_in(client, "bob@example.com")
    r = client.post("/logout", data={"csrf_token": before})
    assert r.status_code == 400
    assert is_signed_in(client)


def test_change_password_needs_the_current_one_and_ends_other_sessions(app, bob):
    """Changing the password checks the current one and ends every other session, not this one."""
    mine, other = app.test_client(), app.test_client()
    sign_in(mine, "bob@example.com")
    sign_in(other, "bob@example.com", remember=True)
    other_remember = cookie(other, "remember_token")
    token = csrf_token(mine, "/account/security")
    r = mine.post(
        "/account/security/password",
        data={
            "csrf_token": token,
            "current": "wrong one!!",
            "password": NEW_PASSWORD,
            "confirm": NEW_PASSWORD,
        },
    )
    assert r.status_code == 400 and "not your current password" in r.get_data(as_text=True)
    assert is_signed_in(other)
    r = mine.post(
        "/account/security/password",
        data={
            "csrf_token": token,
            "current": PASSWORD,
            "password": NEW_PASSWORD,
            "confirm": NEW_PASSWORD,
        },
    )
    assert r.status_code == 303
    assert is_signed_in(mine)
    assert not is_signed_in(other)
    assert not is_signed_in(only_cookie(app, "remember_token", other_remember))
    assert sign_in(app.test_client(), "bob@example.com").status_code == 401
    assert sign_in(app.test_client(), "bob@example.com", NEW_PASSWORD).status_code == 303


def test_sign_out_everywhere_ends_every_other_session(app, bob):
    """Sign out everywhere ends other browsers' sessions and remember-me cookies at once."""
    mine, other, third = app.test_client(), app.test_client(), app.test_client()
    for c in (mine, other, third):
        sign_in(c, "bob@example.com", remember=True)
    stolen = cookie(other, "remember_token")
    page = mine.get("/account/security").get_data(as_text=True)
    assert "3 active sessions" in page
    r = mine.post(
        "/account/security/sign-out-everywhere",
        data={"csrf_token": csrf_token(mine, "/account/security")},
    )
    assert r.status_code == 303
    assert "2 other sessions ended" in mine.get("/account/security").get_data(as_text=True)
    assert is_signed_in(mine)
    assert not is_signed_in(other) and not is_signed_in(third)
    assert not is_signed_in(only_cookie(app, "remember_token", stolen))


def test_session_events_are_sent(app, bob, make_user):
    """Sign-in, failure, sign-out and sign-out-everywhere send their domain events."""
    from drivesync import events

    heard: list[tuple[str, dict]] = []
    signals = ("signed_in", "sign_in_failed", "signed_out", "sessions_ended", "password_changed")
    receivers = {}
    for name in signals:
        receivers[name] = lambda sender, _n=name, **kw: heard.append((_n, kw))
        getattr(events, name).connect(receivers[name])
    try:
        client = app.test_client()
        sign_in(client, "bob@example.com", "wrong password")
        sign_in(client, "bob@example.com")
        client.post(
            "/account/security/sign-out-everywhere",
            data={"csrf_token": csrf_token(client, "/account/security")},
        )
        client.post("/logout", data={"csrf_token": csrf_token(client)})
    finally:
        for name in signals:
            getattr(events, name).disconnect(receivers[name])
    assert [n for n, _ in heard] == ["sign_in_failed", "signed_in", "sessions_ended", "signed_out"]
    assert heard[0][1] == {"email": "bob@example.com"}
    assert all(kw.get("user_id") == bob for _, kw in heard[1:])
    assert not any("password" in str(kw) for _, kw in heard)


@pytest.mark.postgres
def test_a_request_signed_in_by_the_remember_cookie_alone_is_scoped(app, bob, make_file):
    """On PostgreSQL under RLS, a remember-cookie-only request sees the user's library (L7)."""
    if not PG_OWNER_URL:
        pytest.skip("set DRIVESYNC_TEST_POSTGRES_URL to run PostgreSQL tests")
    make_file(bob, "diagnosis.pdf")
    client = app.test_client()
    sign_in(client, "bob@example.com", remember=True)
    fresh = only_cookie(app, "remember_token", cookie(client, "remember_token"))
    page = fresh.get("/library/").get_data(as_text=True)
    assert "diagnosis.pdf" in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    r = fresh.post(
        "/library/upload",
        data={"csrf_token": token, "files": [(io.BytesIO(b"x"), "second.txt")]},
    )
    assert r.status_code == 303
    assert "second.txt" in fresh.get("/library/").get_data(as_text=True)
