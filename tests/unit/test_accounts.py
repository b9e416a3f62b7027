"""Sign-up, sign-in and sign-out through the web app."""

from __future__ import annotations

import re

import pytest

from drivesync.models import User
from tests.conftest import PASSWORD, db_rows, mailed_link, outbox_messages


def _token(client, path: str) -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _signup(client, email: str):
    """Submit the sign-up form (the first step: the e-mail address)."""
    return client.post("/signup", data={"csrf_token": _token(client, "/signup"), "email": email})


def _complete(client, link: str, password: str, confirm: str | None = None):
    """Follow a mailed sign-up link and choose the password; return the last response."""
    hop = client.get(link)
    assert hop.status_code == 303 and hop.headers["Location"] == "/signup/complete"
    token = _token(client, "/signup/complete")
    return client.post(
        "/signup/complete",
        data={"csrf_token": token, "password": password, "confirm": confirm or password},
    )


def _signup_link(app, client, email: str, count: int = 1) -> str:
    """Sign up ``email`` and return the link of the mail that arrives."""
    assert _signup(client, email).status_code == 200
    return mailed_link(outbox_messages(app, count)[-1], "/signup/")


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
    """Each invalid sign-up shows the field's message with 400 and creates no user.

    The address is checked on the first step, the password on the page the mailed link opens.
    """
    if field == "email":
        r = _signup(client, email)
    else:
        r = _complete(client, _signup_link(app, client, email), password, confirm)
    assert r.status_code == 400
    assert message in r.get_data(as_text=True)
    assert f'id="{field}-error"' in r.get_data(as_text=True)
    assert db_rows(app, User) == []


def test_signup_normalises_email_and_signs_in(client, app):
    """Sign-up stores the e-mail trimmed and case-folded, hashes with Argon2id and signs in."""
    r = _signup(client, "  Alice@Example.COM ")
    assert r.status_code == 200 and "Check your e-mail" in r.get_data(as_text=True)
    [message] = outbox_messages(app)
    assert "To: alice@example.com" in message
    r = _complete(client, mailed_link(message, "/signup/"), PASSWORD)
    assert r.status_code == 303
    [user] = db_rows(app, User)
    assert user.email == "alice@example.com"
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert client.get("/library/").status_code == 200


def test_signup_duplicate_email(client, app, make_user):
    """A sign-up for an existing address (in another case) answers exactly like a new one and
    mails the owner instead; no second account is made (probe L2: no enumeration)."""
    make_user("bob@example.com")
    pages = []
    for email in ("BOB@example.com", "new@example.com"):
        r = _signup(app.test_client(), email)
        assert r.status_code == 200
        pages.append(
            re.sub(r'(value="|Token": ")[^"]+"', "", r.get_data(as_text=True)).replace(
                email.lower(), "ADDRESS"
            )
        )
    assert pages[0] == pages[1]
    messages = outbox_messages(app, 2)
    mine = next(m for m in messages if "To: bob@example.com" in m)
    assert "already has one" in mine and "/signup/" not in mine
    assert [u.email for u in db_rows(app, User)] == ["bob@example.com"]


def test_signup_link_works_once(client, app):
    """A sign-up link cannot create a second account or reset the first one's password."""
    link = _signup_link(app, client, "zoe@example.com")
    assert _complete(client, link, PASSWORD).status_code == 303
    other = app.test_client()
    hop = other.get(link)
    assert hop.status_code == 303
    r = other.get("/signup/complete")
    assert r.status_code == 400 and "expired or was already used" in r.get_data(as_text=True)
    assert len(db_rows(app, User)) == 1


def test_signup_hashes_no_password_before_the_link_is_opened(client, app, make_user, monkeypatch):
    """Neither a new nor a duplicate sign-up costs an Argon2 hash (probe L2: no hash flood)."""
    from drivesync.services import accounts

    make_user("taken@example.com")
    calls = []

    class CountingHasher(type(accounts._hasher)):
        def hash(self, password, **kwargs):
            calls.append(1)
            return super().hash(password, **kwargs)

    monkeypatch.setattr(
        accounts, "_hasher", CountingHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    for email in ("taken@example.com", "fresh@example.com"):
        r = client.post(
            "/signup",
            data={
                "csrf_token": _token(client, "/signup"),
                "email": email,
                "password": PASSWORD,
                "confirm": PASSWORD,
            },
        )
        assert r.status_code == 200
    assert calls == []


@pytest.mark.parametrize(
    "app_overrides", [{"RATELIMIT_ENABLED": True, "SIGNUP_RATE_LIMIT": "3 per hour"}]
)
def test_signup_is_rate_limited(client, app):
    """A fourth sign-up from one address within the window is refused (probe L2)."""
    codes = [_signup(client, f"person{i}@example.com").status_code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]


@pytest.mark.parametrize("app_overrides", [{"SIGNUP": "closed"}])
def test_signup_closed(client, app, make_user):
    """With DRIVESYNC_SIGNUP=closed there is no sign-up; accounts come from the CLI."""
    page = client.get("/signup")
    assert page.status_code == 403 and "Sign-up is closed" in page.get_data(as_text=True)
    r = client.post("/signup", data={"csrf_token": _token(client, "/login"), "email": "x@y.z"})
    assert r.status_code == 403
    assert "Create account" not in client.get("/login").get_data(as_text=True)
    result = app.test_cli_runner().invoke(
        args=["users", "create", "cli@example.com"], input=f"{PASSWORD}\n{PASSWORD}\n"
    )
    assert result.exit_code == 0, result.output
    assert [u.email for u in db_rows(app, User)] == ["cli@example.com"]


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
