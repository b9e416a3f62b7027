"""Sign-up, sign-in and sign-out through the web app."""

from __future__ import annotations

import re

import pytest

from drivesync.models import User
from tests.conftest import PASSWORD, db_rows


def _token(client, path: str) -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


@pytest.mark.parametrize(
    ("email", "password", "confirm", "field", "message"),
    [
        ("", PASSWORD, PASSWORD, "email", "Enter your e-mail address."),
        ("not-an-email", PASSWORD, PASSWORD, "email", "valid e-mail"),
        ("a@b", PASSWORD, PASSWORD, "email", "valid e-mail"),
        ("x" * 250 + "@example.com", PASSWORD, PASSWORD, "email", "valid e-mail"),
        ("ok@example.com", "short", "short", "password", "at least 10"),
        ("ok@example.com", "p" * 1025, "p" * 1025, "password", "at most 1024"),
        ("ok@example.com", "with\x00nul-char", "with\x00nul-char", "password", "NUL"),
        ("ok@example.com", PASSWORD, PASSWORD + "x", "confirm", "do not match"),
    ],
)
def test_signup_validation(client, app, email, password, confirm, field, message):
    """Each invalid sign-up shows the field's message with 400 and creates no user."""
    token = _token(client, "/signup")
    r = client.post(
        "/signup",
        data={"csrf_token": token, "email": email, "password": password, "confirm": confirm},
    )
    assert r.status_code == 400
    assert message in r.get_data(as_text=True)
    assert f'id="{field}-error"' in r.get_data(as_text=True)
    assert db_rows(app, User) == []


def test_signup_normalises_email_and_signs_in(client, app):
    """Sign-up stores the e-mail trimmed and case-folded, hashes with Argon2id and signs in."""
    token = _token(client, "/signup")
    r = client.post(
        "/signup",
        data={
            "csrf_token": token,
            "email": "  Alice@Example.COM ",
            "password": PASSWORD,
            "confirm": PASSWORD,
        },
    )
    assert r.status_code == 303
    [user] = db_rows(app, User)
    assert user.email == "alice@example.com"
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert client.get("/library/").status_code == 200


def test_signup_duplicate_email(client, make_user):
    """A second sign-up with the same e-mail in another case is refused."""
    make_user("bob@example.com")
    token = _token(client, "/signup")
    r = client.post(
        "/signup",
        data={
            "csrf_token": token,
            "email": "BOB@example.com",
            "password": PASSWORD,
            "confirm": PASSWORD,
        },
    )
    assert r.status_code == 400
    assert "already exists" in r.get_data(as_text=True)


def test_login_logout(client, make_user):
    """Good credentials sign in; sign-out needs POST and ends the session."""
    make_user("carol@example.com")
    token = _token(client, "/login")
    r = client.post(
        "/login", data={"csrf_token": token, "email": "Carol@example.com ", "password": PASSWORD}
    )
    assert r.status_code == 303 and r.headers["Location"].endswith("/library/")
    assert client.get("/library/").status_code == 200
    assert client.get("/logout").status_code == 405
    r = client.post("/logout", data={"csrf_token": _token(client, "/library/")})
    assert r.status_code == 303
    assert client.get("/library/").status_code == 303


@pytest.mark.parametrize(
    ("email", "password"),
    [("dave@example.com", "wrong password!"), ("nobody@example.com", PASSWORD), ("", "")],
)
def test_login_bad_credentials_one_message(client, make_user, email, password):
    """Wrong password and unknown e-mail get the same generic message."""
    make_user("dave@example.com")
    token = _token(client, "/login")
    r = client.post("/login", data={"csrf_token": token, "email": email, "password": password})
    assert r.status_code == 401
    body = r.get_data(as_text=True)
    assert "Incorrect e-mail or password." in body
    assert "no account" not in body.lower()


def test_login_next_is_local_only(client, make_user):
    """A ``next`` pointing off-site is ignored after sign-in."""
    make_user("erin@example.com")
    token = _token(client, "/login")
    for bad in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        r = client.post(
            f"/login?next={bad}",
            data={"csrf_token": token, "email": "erin@example.com", "password": PASSWORD},
        )
        assert r.headers["Location"].endswith("/library/"), bad
        client.post("/logout", data={"csrf_token": _token(client, "/library/")})
        token = _token(client, "/login")


def test_post_without_csrf_token_is_rejected(client, make_user):
    """A POST without the CSRF token is refused with 400 and signs nobody in."""
    make_user("frank@example.com")
    r = client.post("/login", data={"email": "frank@example.com", "password": PASSWORD})
    assert r.status_code == 400
    assert "security token" in r.get_data(as_text=True)
    assert client.get("/library/").status_code == 303


def test_htmx_csrf_header_accepted(client, make_user, login):
    """An htmx POST carrying the token in X-CSRFToken (as hx-headers sends it) is accepted."""
    uid = make_user()
    login(uid)
    token = _token(client, "/library/")
    r = client.post("/logout", headers={"HX-Request": "true", "X-CSRFToken": token})
    assert r.status_code == 204
    assert r.headers["HX-Redirect"].endswith("/login")


def test_unauthenticated_htmx_gets_hx_redirect(client):
    """An htmx request without a session gets 401 with HX-Redirect to sign-in."""
    r = client.get("/library/", headers={"HX-Request": "true"})
    assert r.status_code == 401
    assert "/login" in r.headers["HX-Redirect"]


@pytest.mark.parametrize(
    "app_overrides", [{"RATELIMIT_ENABLED": True, "LOGIN_RATE_LIMIT": "3 per minute"}]
)
def test_login_rate_limited(client, make_user):
    """Too many failed sign-ins for one account are answered 429."""
    make_user("gina@example.com")
    token = _token(client, "/login")
    codes = [
        client.post(
            "/login",
            data={"csrf_token": token, "email": "gina@example.com", "password": "wrong one!"},
        ).status_code
        for _ in range(5)
    ]
    assert codes[:3] == [401, 401, 401]
    assert codes[3:] == [429, 429]
