"""Production headers and cookies, and sign-in rate limits per account and per address."""

from __future__ import annotations

import re

import pytest

from drivesync import create_app
from drivesync.extensions import db
from drivesync.services import accounts
from drivesync.vault import new_key
from tests.conftest import sign_in_as


def _token(client, path: str = "/login") -> str:
    return re.search(
        r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)
    ).group(1)


@pytest.fixture
def prod_app(tmp_path, monkeypatch):
    """An app configured for production (on SQLite, which production allows with a warning)."""
    for key, value in {
        "DRIVESYNC_ENV": "production",
        "DRIVESYNC_SECRET_KEY": "p" * 48,
        "DRIVESYNC_TOKEN_KEYS": new_key(),
        "DRIVESYNC_MS_CLIENT_ID": "client",
        "DRIVESYNC_MS_CLIENT_SECRET": "secret",
        "DRIVESYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        "DRIVESYNC_INSTANCE_DIR": str(tmp_path),
        "DRIVESYNC_PROXY_COUNT": "1",
        "DRIVESYNC_TRUSTED_HOSTS": "drivesync.example, app.example, internal",
        "DRIVESYNC_RATELIMIT_STORAGE_URI": "memory://",
        "DRIVESYNC_SINGLE_PROCESS": "true",
    }.items():
        monkeypatch.setenv(key, value)
    return create_app()


def test_production_sends_hsts_and_secure_cookies(prod_app):
    """Production adds HSTS and marks the session cookie Secure, HttpOnly, SameSite=Lax."""
    client = prod_app.test_client()
    r = client.get("/login", base_url="https://drivesync.example")
    assert "max-age=" in r.headers["Strict-Transport-Security"]
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    cookie = r.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_redirect_uri_behind_one_proxy(prod_app):
    """Behind one proxy, the OAuth redirect URI uses the forwarded scheme and host."""
    with prod_app.app_context():
        db.create_all()
        user = accounts.create_user("proxy@example.com", "correct horse battery")
    client = prod_app.test_client()
    sign_in_as(client, user.id, base_url="https://internal")
    fwd = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example"}
    page = client.get("/settings/onedrive/", headers=fwd, base_url="https://internal")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))[1]
    # Over HTTPS, Flask-WTF also wants a same-origin Referer (browsers send it: same-origin policy).
    r = client.post(
        "/settings/onedrive/connect",
        data={"csrf_token": token},
        headers={**fwd, "Referer": "https://app.example/settings/onedrive/"},
        base_url="https://internal",
    )
    assert r.status_code == 303
    location = r.headers["Location"]
    assert location.startswith("https://login.microsoftonline.com/common/oauth2/v2.0/authorize?")
    assert "redirect_uri=https%3A%2F%2Fapp.example%2Fsettings%2Fonedrive%2Fcallback" in location


@pytest.mark.parametrize(
    "app_overrides", [{"RATELIMIT_ENABLED": True, "LOGIN_RATE_LIMIT": "3 per minute"}]
)
def test_per_account_limit_holds_across_addresses(client, make_user):
    """Guessing one account's password from many addresses still hits the account's limit."""
    make_user("victim@example.com")
    token = _token(client)
    codes = []
    for i in range(5):
        r = client.post(
            "/login",
            data={
                "csrf_token": token,
                "email": "Victim@Example.com",
                "password": f"guess number {i}",
            },
            environ_base={"REMOTE_ADDR": f"203.0.113.{i + 1}"},
        )
        codes.append(r.status_code)
    assert codes == [401, 401, 401, 429, 429]


@pytest.mark.parametrize(
    "app_overrides", [{"RATELIMIT_ENABLED": True, "LOGIN_RATE_LIMIT": "3 per minute"}]
)
def test_per_address_limit_holds_across_accounts(client, make_user):
    """Spraying many accounts from one address hits the address's limit."""
    token = _token(client)
    codes = [
        client.post(
            "/login",
            data={"csrf_token": token, "email": f"user{i}@example.com", "password": "Winter2026!"},
        ).status_code
        for i in range(5)
    ]
    assert codes == [401, 401, 401, 429, 429]
