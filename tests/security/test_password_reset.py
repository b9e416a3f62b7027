"""Password reset by mail, through a real SMTP server (aiosmtpd) on a free local port."""

from __future__ import annotations

import asyncio
import email
import logging
import re
import socket
import time
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import PASSWORD, csrf_token, outbox_messages
from tests.security.test_sessions import cookie, is_signed_in, only_cookie, sign_in

NEW_PASSWORD = "a brand new passphrase"
LINK_RE = re.compile(r"(https?://[^\s]+/password/reset/[^\s]+)")


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    delay: float = 0.0
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """Store the message (after an optional delay, like a slow mail server)."""
        if self.delay:
            await asyncio.sleep(self.delay)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[Message]:
        """Return the messages once ``count`` have arrived."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.messages) >= count, f"{len(self.messages)} of {count} mails arrived"
        return self.messages


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def inbox() -> Any:
    """A real SMTP server on 127.0.0.1 for the test's mail."""
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=_free_port())
    controller.start()
    handler.port = controller.port  # type: ignore[attr-defined]
    yield handler
    controller.stop()


@pytest.fixture
def app_overrides(inbox) -> dict[str, Any]:
    """Send mail to the test's SMTP server."""
    return {"SMTP_URL": f"smtp://127.0.0.1:{inbox.port}"}


def ask_for_reset(client, address: str, **kwargs: Any):
    """Submit the forgot-password form."""
    page = client.get("/password/forgot", **kwargs).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    return client.post("/password/forgot", data={"csrf_token": token, "email": address}, **kwargs)


def reset_link(message: Message) -> str:
    """Return the reset link in a mail."""
    body = message.get_payload(decode=True).decode()
    match = LINK_RE.search(body)
    assert match, body
    return match.group(1)


def choose_password(client, link: str, password: str = NEW_PASSWORD):
    """Follow a reset link and submit a new password; return the last response."""
    path = link.split("://", 1)[1].split("/", 1)[1]
    r = client.get("/" + path)
    if r.status_code != 303:
        return r
    page = client.get(r.headers["Location"])
    if page.status_code != 200:
        return page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))[1]
    return client.post(
        "/password/reset",
        data={"csrf_token": token, "password": password, "confirm": password},
    )


@pytest.fixture
def bob(make_user) -> int:
    """A user with the default password."""
    return make_user("bob@example.com")


def test_reset_by_mail_ends_every_session_and_works_once(app, client, inbox, bob):
    """A mailed link sets a new password once; every old session and remember cookie dies."""
    victim_browser = app.test_client()
    sign_in(victim_browser, "bob@example.com", remember=True)
    stolen = cookie(victim_browser, "remember_token")
    r = ask_for_reset(client, "Bob@Example.com")
    assert r.status_code == 200
    [message] = inbox.wait()
    assert message["To"] == "bob@example.com"
    link = reset_link(message)
    hop = client.get("/" + link.split("://", 1)[1].split("/", 1)[1])
    assert hop.status_code == 303 and hop.headers["Location"] == "/password/reset"  # no token
    r = choose_password(client, link)
    assert r.status_code == 303 and r.headers["Location"] == "/library/"
    assert is_signed_in(client)
    assert not is_signed_in(victim_browser)
    assert not is_signed_in(only_cookie(app, "remember_token", stolen))
    assert sign_in(app.test_client(), "bob@example.com").status_code == 401
    assert sign_in(app.test_client(), "bob@example.com", NEW_PASSWORD).status_code == 303
    again = choose_password(app.test_client(), link, "yet another passphrase")
    assert again.status_code == 400 and "expired or was already used" in again.get_data(
        as_text=True
    )
    assert sign_in(app.test_client(), "bob@example.com", NEW_PASSWORD).status_code == 303


def test_reset_link_expires(app, client, inbox, bob, monkeypatch):
    """A link older than RESET_MINUTES is refused."""
    ask_for_reset(client, "bob@example.com")
    link = reset_link(inbox.wait()[0])
    later = time.time() + app.config["RESET_MINUTES"] * 60 + 5
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: later)
    r = choose_password(app.test_client(), link)
    assert r.status_code == 400 and "expired" in r.get_data(as_text=True)
    assert sign_in(app.test_client(), "bob@example.com").status_code == 303


def test_reset_link_is_bound_to_the_password_it_was_issued_for(app, client, inbox, bob):
    """A password change in between kills an outstanding reset link."""
    ask_for_reset(client, "bob@example.com")
    link = reset_link(inbox.wait()[0])
    me = app.test_client()
    sign_in(me, "bob@example.com")
    me.post(
        "/account/security/password",
        data={
            "csrf_token": csrf_token(me, "/account/security"),
            "current": PASSWORD,
            "password": NEW_PASSWORD,
            "confirm": NEW_PASSWORD,
        },
    )
    r = choose_password(app.test_client(), link, "attacker's passphrase")
    assert r.status_code == 400
    assert sign_in(app.test_client(), "bob@example.com", NEW_PASSWORD).status_code == 303


def test_same_answer_for_known_and_unknown_addresses_without_waiting_for_mail(
    app, client, inbox, bob
):
    """The forgot page answers alike for any address and does not wait for the mail server."""
    inbox.delay = 1.5
    pages, times = [], []
    for address in ("bob@example.com", "nobody@example.com"):
        t0 = time.perf_counter()
        r = ask_for_reset(app.test_client(), address)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200
        pages.append(
            re.sub(r'(value="|Token": ")[^"]+"', "", r.get_data(as_text=True)).replace(
                address, "ADDRESS"
            )
        )
    assert pages[0] == pages[1]
    assert "If an account uses" in pages[0]
    assert max(times) < 1.0, times  # the 1.5 s SMTP exchange happens in the background
    inbox.wait(1)
    time.sleep(0.2)
    assert [m["To"] for m in inbox.messages] == ["bob@example.com"]


def test_reset_link_ignores_a_forged_host_header(app, client, inbox, bob):
    """The link in the mail uses the configured public URL, not the request's Host."""
    app.config["PUBLIC_URL"] = "https://drivesync.example"
    ask_for_reset(client, "bob@example.com", headers={"Host": "evil.example"})
    link = reset_link(inbox.wait()[0])
    assert link.startswith("https://drivesync.example/password/reset/")


@pytest.mark.parametrize(
    "app_overrides",
    [{"RATELIMIT_ENABLED": True, "RESET_RATE_LIMIT": "2 per hour", "SMTP_URL": ""}],
)
def test_forgot_password_is_rate_limited(app, bob):
    """A third reset request for one address within the window is refused (no mail bombing)."""
    codes = [
        ask_for_reset(
            app.test_client(), "bob@example.com", environ_base={"REMOTE_ADDR": f"192.0.2.{i}"}
        ).status_code
        for i in range(3)
    ]
    assert codes == [200, 200, 429]


@pytest.mark.parametrize("app_overrides", [{"SMTP_URL": ""}])
def test_development_writes_mail_to_the_outbox(app, client, bob, caplog, tmp_path):
    """Without SMTP, development writes the mail to instance/outbox/ and logs where."""
    caplog.set_level(logging.WARNING, logger="drivesync.mail")
    ask_for_reset(client, "bob@example.com")
    outbox = tmp_path / "instance" / "outbox"
    [mail] = outbox_messages(app)  # waits for a whole message: the mail is written by a thread
    assert "/password/reset/" in mail
    deadline = time.monotonic() + 10
    while "mail written to" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert f"mail written to {outbox}" in caplog.text
    assert "/password/reset/" not in caplog.text  # the link stays out of the log


@pytest.mark.parametrize(
    "app_overrides", [{"SMTP_URL": "", "ENV_NAME": "production", "MAIL_FROM": "x@example.com"}]
)
def test_without_mail_the_pages_say_reset_is_unavailable(app, client):
    """A server that cannot send mail offers no reset link and says so."""
    assert "Forgot password?" not in client.get("/login").get_data(as_text=True)
    page = client.get("/password/forgot").get_data(as_text=True)
    assert "cannot send e-mail" in page
