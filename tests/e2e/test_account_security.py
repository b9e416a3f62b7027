"""In Chromium: forget the password, reset it through the mailed link; the old session dies."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import mailed_link, outbox_messages

from .conftest import LiveServer
from .test_browser import PASSWORD, T, sign_up

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NEW_PASSWORD = "a brand new passphrase"


def test_password_reset_through_the_mail_ends_the_old_session(
    page: Page, browser: Browser, live_server: LiveServer
) -> None:
    """A user resets a forgotten password from the mailed link; a browser signed in before is
    signed out, the old password no longer works and the new one does."""
    email = "forgetful@example.com"
    sign_up(page, live_server, email)
    old_browser = browser.new_context()
    old_page = old_browser.new_page()
    old_page.goto(live_server.url + "/login")
    old_page.get_by_label("E-mail").fill(email)
    old_page.get_by_label("Password").fill(PASSWORD)
    old_page.get_by_label("Keep me signed in").check()
    old_page.get_by_role("button", name="Sign in").click()
    expect(old_page.get_by_role("heading", name="Your library")).to_be_visible(timeout=T)

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("link", name="Forgot password?").click()
    page.get_by_label("E-mail").fill(email)
    page.get_by_role("button", name="Send reset link").click()
    expect(page.get_by_role("status").filter(has_text="we have sent it a link")).to_be_visible(
        timeout=T
    )
    message = outbox_messages(live_server.app, 2)[-1]
    assert "Reset your drivesync password" in message
    page.goto(live_server.url + mailed_link(message, "/password/reset/"))
    expect(page).to_have_url(live_server.url + "/password/reset", timeout=T)  # token left the URL
    page.get_by_label("New password", exact=False).first.fill(NEW_PASSWORD)
    page.get_by_label("Repeat new password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Set new password").click()
    expect(page.get_by_role("heading", name="Your library")).to_be_visible(timeout=T)
    expect(page.locator(".flash-success")).to_contain_text("password is changed", timeout=T)

    old_page.reload()
    expect(old_page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=T)

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Incorrect e-mail or password", timeout=T)
    page.get_by_label("Password").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your library")).to_be_visible(timeout=T)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Account").click()
    page.get_by_role("navigation", name="Account").get_by_role(
        "link", name="Password and sessions"
    ).click()
    expect(page.get_by_role("heading", name="Account security")).to_be_visible(timeout=T)
    old_browser.close()
