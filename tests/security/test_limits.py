"""Limits that hold: sign-in throttling without lock-out, shared counters in production, and
upload bodies refused before they touch the disk (probe L1 and L3)."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid

import pytest

from drivesync.config import ConfigError, load_config, validate_config
from drivesync.services.storage import LocalStorage
from tests.conftest import PASSWORD, ROOT, csrf_token
from tests.security.test_sessions import sign_in
from tests.unit.test_config import GOOD_PROD

LIMITED = {"RATELIMIT_ENABLED": True, "LOGIN_RATE_LIMIT": "3 per minute"}


def _guess(client, email: str, password: str, address: str) -> int:
    token = csrf_token(client, "/login")
    return client.post(
        "/login",
        data={"csrf_token": token, "email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    ).status_code


@pytest.mark.parametrize("app_overrides", [LIMITED])
def test_the_owner_is_not_locked_out_from_a_browser_that_signed_in_before(app, make_user):
    """Guesses from many addresses refuse strangers, but not the owner's known browser (L1)."""
    make_user("victim@example.com")
    owner = app.test_client()
    assert sign_in(owner, "victim@example.com").status_code == 303
    owner.post("/logout", data={"csrf_token": csrf_token(owner)})
    attacker = app.test_client()
    codes = [
        _guess(attacker, "victim@example.com", f"guess {i}!!!!", f"198.51.100.{i}")
        for i in range(6)
    ]
    assert codes == [401, 401, 401, 429, 429, 429]
    # A stranger with the right password is held back too (the password is not even checked)...
    assert _guess(app.test_client(), "victim@example.com", PASSWORD, "192.0.2.77") == 429
    # ...but the owner's browser carries its device cookie and gets in from a fresh address.
    assert _guess(owner, "victim@example.com", PASSWORD, "192.0.2.78") == 303


@pytest.mark.parametrize("app_overrides", [LIMITED])
def test_a_device_cookie_gets_its_own_budget_only_for_its_account(app, make_user):
    """A device cookie is limited too, and is worth nothing for another account."""
    make_user("owner@example.com")
    make_user("other@example.com")
    device = app.test_client()
    sign_in(device, "owner@example.com")
    device.post("/logout", data={"csrf_token": csrf_token(device)})
    own = [_guess(device, "owner@example.com", "wrong guess!", "192.0.2.1") for _ in range(4)]
    assert own == [401, 401, 401, 429]
    for i in range(3):
        _guess(app.test_client(), "other@example.com", "nope nope!!", f"198.51.100.{i}")
    assert _guess(device, "other@example.com", PASSWORD, "192.0.2.9") == 429


@pytest.mark.parametrize("app_overrides", [LIMITED])
def test_unknown_addresses_are_throttled_like_real_ones(app, make_user):
    """Throttling answers the same for an account that does not exist (no enumeration)."""
    make_user("real@example.com")
    results = []
    for email in ("real@example.com", "ghost@example.com"):
        client = app.test_client()
        results.append([_guess(client, email, "bad guess!", f"203.0.113.{i}") for i in range(5)])
    assert results[0] == results[1] == [401, 401, 401, 429, 429]


@pytest.mark.parametrize("app_overrides", [LIMITED])
def test_throttled_answer_says_when_to_retry(app, make_user):
    """A refused attempt says what to do and carries Retry-After."""
    make_user("x@example.com")
    client = app.test_client()
    for i in range(3):
        _guess(client, "x@example.com", "bad guess!", f"203.0.113.{i}")
    token = csrf_token(client, "/login")
    r = client.post(
        "/login",
        data={"csrf_token": token, "email": "x@example.com", "password": "bad guess!"},
        environ_base={"REMOTE_ADDR": "203.0.113.99"},
    )
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert "Too many sign-in attempts" in r.get_data(as_text=True)


def test_production_refuses_per_process_rate_limit_counters():
    """Production will not count sign-ins per worker (memory://) unless it is one process."""
    with pytest.raises(ConfigError, match="RATELIMIT_STORAGE_URI"):
        validate_config(load_config({**GOOD_PROD, "DRIVESYNC_RATELIMIT_STORAGE_URI": "memory://"}))
    single = {
        **GOOD_PROD,
        "DRIVESYNC_RATELIMIT_STORAGE_URI": "memory://",
        "DRIVESYNC_SINGLE_PROCESS": "true",
    }
    validate_config(load_config(single))
    cfg = load_config({**GOOD_PROD, "DRIVESYNC_CELERY_BROKER_URL": "redis://cache:6379/2"})
    assert cfg["RATELIMIT_STORAGE_URI"] == "redis://cache:6379/2"


WORKER_SCRIPT = """
import sys
from drivesync import create_app
from tests.conftest import app_config
from tests.security.test_limits import _guess
app = create_app(app_config(__import__("pathlib").Path(sys.argv[1]), sys.argv[2],
    RATELIMIT_ENABLED=True, LOGIN_RATE_LIMIT="3 per minute",
    RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/0", RATELIMIT_KEY_PREFIX=sys.argv[3]))
print(_guess(app.test_client(), "shared@example.com", "bad guess!", "198.51.100.200"))
"""


@pytest.mark.celery
@pytest.mark.slow
@pytest.mark.parametrize(
    "app_overrides",
    [
        {
            "RATELIMIT_ENABLED": True,
            "LOGIN_RATE_LIMIT": "3 per minute",
            "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0",
            "RATELIMIT_KEY_PREFIX": f"drivesync-test-{uuid.uuid4().hex}",
        }
    ],
)
def test_counters_are_shared_between_processes(app, make_user, tmp_path, database_url):
    """Guesses counted by one process (a gunicorn worker) hold back another one on Redis (L1)."""
    make_user("shared@example.com")
    client = app.test_client()
    codes = [
        _guess(client, "shared@example.com", "bad guess!", f"198.51.100.{i}") for i in range(3)
    ]
    assert codes == [401, 401, 401]
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER_SCRIPT,
            str(tmp_path / "w2"),
            database_url,
            app.config["RATELIMIT_KEY_PREFIX"],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert other.stdout.strip().splitlines()[-1] == "429"


def test_proxy_count_decides_which_forwarded_address_counts(app_overrides, tmp_path, database_url):
    """With one proxy, only the address it appended counts: a client's own X-Forwarded-For
    entries cannot rotate the per-address key (L1); with none, the header is ignored."""
    from drivesync import create_app
    from tests.conftest import app_config

    seen = []
    for proxies in (1, 0):
        app = create_app(app_config(tmp_path, database_url, PROXY_COUNT=proxies))
        app.add_url_rule(
            "/_addr", "addr", lambda: seen.append(__import__("flask").request.remote_addr) or ""
        )
        client = app.test_client()
        for spoof in ("1.1.1.1", "2.2.2.2"):
            client.get(
                "/_addr",
                headers={"X-Forwarded-For": f"{spoof}, 203.0.113.5"},
                environ_base={"REMOTE_ADDR": "10.0.0.1"},
            )
    assert seen == ["203.0.113.5", "203.0.113.5", "10.0.0.1", "10.0.0.1"]


def _watch_incoming(monkeypatch) -> list[int]:
    """Record every incoming file storage opens for an upload body."""
    opened: list[int] = []
    real = LocalStorage.new_incoming

    def spy(self, *args, **kwargs):
        opened.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LocalStorage, "new_incoming", spy)
    return opened


def test_anonymous_upload_body_never_touches_the_disk(app, client, monkeypatch):
    """An upload without a session is refused before its body is read (L3)."""
    opened = _watch_incoming(monkeypatch)
    token = csrf_token(client, "/login")  # an anonymous session's valid token
    for path in ("/library/upload", "/library/1/replace", "/login"):
        r = client.post(
            path,
            data={"csrf_token": token, "files": [(io.BytesIO(b"x" * 100_000), "anon.bin")]},
        )
        assert r.status_code in (303, 401), path
        assert r.headers.get("Connection") == "close"
    r = client.post(
        "/library/upload",
        data={"csrf_token": token, "files": [(io.BytesIO(b"x"), "a.bin")]},
        headers={"HX-Request": "true"},
    )
    assert r.status_code == 401 and "/login" in r.headers["HX-Redirect"]
    assert opened == []


def test_upload_without_a_valid_csrf_token_never_touches_the_disk(
    app, client, make_user, login, monkeypatch
):
    """A signed-in upload without a valid CSRF token first is refused before its body (L3)."""
    login(make_user())
    opened = _watch_incoming(monkeypatch)
    for data, headers in (
        ({"files": [(io.BytesIO(b"x" * 1000), "no-token.bin")]}, {}),
        ({"csrf_token": "forged", "files": [(io.BytesIO(b"x"), "bad.bin")]}, {}),
        ({"files": [(io.BytesIO(b"x"), "bad-header.bin")]}, {"X-CSRFToken": "forged"}),
    ):
        r = client.post("/library/upload", data=data, headers=headers)
        assert r.status_code == 400
        assert "security token" in r.get_data(as_text=True)
    assert opened == []
    # The same upload with the token (in the body, first; or in the header) is stored.
    token = csrf_token(client)
    r = client.post(
        "/library/upload", data={"csrf_token": token, "files": [(io.BytesIO(b"ok"), "ok.txt")]}
    )
    assert r.status_code == 303
    r = client.post(
        "/library/upload",
        data={"files": [(io.BytesIO(b"ok"), "ok2.txt")]},
        headers={"X-CSRFToken": token},
    )
    assert r.status_code == 303
    assert len(opened) == 2
    page = client.get("/library/").get_data(as_text=True)
    assert "ok.txt" in page and "ok2.txt" in page
