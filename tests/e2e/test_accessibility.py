"""axe-core in the real Chromium: no serious or critical violation on any page.

axe-playwright-python ships axe-core inside its wheel (nothing downloads). The account is
connected and holds files in every state (a file refused for its name, a retryable failure, a
conflict, a synced file, a pending one), so the settings page shows all of its parts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from drivesync.extensions import db
from drivesync.models import ExportJob, Integration
from tests.conftest import mailed_link, outbox_messages

from .conftest import VIEWPORT, LiveServer
from .seed import BAD_NAME, BUSY, CLASH, REMOTE_ONLY, SYNCED, add_file, seed_account, set_file
from .test_browser import T

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BLOCKING = {"serious", "critical"}


def blocking_violations(page: Page) -> list[dict[str, Any]]:
    """Run axe on the page; return its serious and critical violations."""
    results = Axe().run(page)
    return [v for v in results.response["violations"] if v.get("impact") in BLOCKING]


def describe(violations: list[dict[str, Any]]) -> str:
    """Return the violations as readable lines: rule, impact, help and the offending nodes."""
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']} {v.get('helpUrl', '')}")
        for node in v.get("nodes", [])[:5]:
            lines.append(f"    {node.get('target')}: {node.get('failureSummary', '')}")
    return "\n".join(lines)


def check(page: Page, name: str, found: dict[str, str]) -> None:
    """Record the page's blocking violations under ``name``."""
    violations = blocking_violations(page)
    if violations:
        found[name] = describe(violations)


def test_every_page_passes_axe(browser: Browser, page: Page, live_server: LiveServer) -> None:
    live = live_server
    found: dict[str, str] = {}

    anonymous = browser.new_context(viewport=VIEWPORT)
    try:
        visitor = anonymous.new_page()
        for path in ("/login", "/signup"):
            visitor.goto(live.url + path)
            expect(visitor.get_by_role("heading", level=1)).to_be_visible(timeout=T)
            check(visitor, path, found)
        # A form with its errors shown (sign-in refused).
        visitor.goto(live.url + "/login")
        visitor.get_by_label("E-mail").fill("nobody@example.com")
        visitor.get_by_label("Password").fill("wrong password")
        visitor.get_by_role("button", name="Sign in").click()
        check(visitor, "/login (refused)", found)
    finally:
        anonymous.close()

    s = seed_account(page, live, "axe@example.com")
    # Issue 11's states: newer in OneDrive, deleted there, kept only here, renamed there.
    for name, values in (
        ("changed.txt", {"onedrive_sync_status": "remote_changed", "onedrive_id": "gone-1"}),
        ("deleted.txt", {"onedrive_sync_status": "remote_deleted", "onedrive_id": "gone-2"}),
        ("local.txt", {"onedrive_sync_status": "local_only"}),
        ("renamed.txt", {"onedrive_sync_status": "synced", "onedrive_id": "gone-3",
                         "onedrive_name": "renamed-there.txt",
                         "onedrive_path": "/drivesync/renamed-there.txt"}),
    ):  # fmt: skip
        s.files[name] = add_file(live, s.user_id, name, name.encode())
        set_file(live, s.user_id, s.files[name], **values)
    page.goto(live.url + "/library/")
    expect(page.locator("#library table.files")).to_be_visible(timeout=T)
    check(page, "/library/", found)

    page.goto(live.url + "/settings/onedrive/")
    pending = page.locator("#pending-files")
    expect(pending.locator(f"#pending-{s.files[CLASH]}")).to_be_visible(timeout=T)
    expect(pending.get_by_label(f"New name for {BAD_NAME}")).to_be_visible(timeout=T)
    expect(page.get_by_role("progressbar")).to_have_count(1)  # the OneDrive storage bar
    check(page, "/settings/onedrive/", found)
    live.shot(page, "settings-every-state")

    # The flash area with an htmx message in it (a refused rename).
    pending.get_by_label(f"New name for {BAD_NAME}").fill("still:bad.txt")
    pending.get_by_role("button", name="Rename").click()
    expect(page.locator("#flashes .flash-error")).to_be_visible(timeout=T)
    check(page, "/settings/onedrive/ (message)", found)

    expect(pending.locator(f"#pending-{s.files['deleted.txt']}")).to_contain_text(
        "Deleted in OneDrive."
    )
    expect(page.locator("#remote-policy")).to_be_visible(timeout=T)

    page.goto(live.url + "/settings/onedrive/browse")
    expect(page.locator(f'tr[data-name="{SYNCED}"]')).to_contain_text("In your library")
    check(page, "/settings/onedrive/browse", found)
    # An import under way and done, in the row (htmx partial) and on its own page.
    row = page.locator(f'tr[data-name="{REMOTE_ONLY}"]')
    row.get_by_role("button", name="Import to library").click()
    expect(row.locator(".import-status")).to_contain_text("Imported", timeout=T)
    check(page, "/settings/onedrive/browse (imported)", found)
    page.goto(live.url + "/settings/onedrive/imports/1")
    expect(page.get_by_role("heading", name="Import from OneDrive")).to_be_visible(timeout=T)
    check(page, "/settings/onedrive/imports/1", found)
    live.shot(page, "browse-in-your-library")

    page.goto(live.url + "/library/999999/download")
    expect(page.get_by_role("heading", level=1)).to_be_visible(timeout=T)
    check(page, "404 page", found)

    assert not found, "axe found serious/critical violations:\n" + "\n\n".join(
        f"== {name}\n{text}" for name, text in found.items()
    )


def test_keyboard_focus_is_visible(page: Page, live_server: LiveServer) -> None:
    """Tabbing reaches the skip link first, then each control shows a focus outline."""
    page.goto(live_server.url + "/no-such-page")  # a page without an autofocused field
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    box = skip.bounding_box()
    assert box and box["x"] >= 0 and box["y"] >= 0, "the focused skip link is off screen"
    seen = 0
    for _ in range(8):
        page.keyboard.press("Tab")
        style = page.evaluate(
            "() => { const s = getComputedStyle(document.activeElement);"
            " return [document.activeElement.tagName, s.outlineStyle, s.outlineWidth]; }"
        )
        tag, outline, width = style
        if tag in ("A", "BUTTON", "INPUT"):
            seen += 1
            assert outline != "none" and width != "0px", f"{tag} has no visible focus: {style}"
    assert seen >= 3


FOCUSABLE = "main a[href], main button, main input:not([type=hidden]), main select, main summary"


def check_focus(page: Page, name: str, found: dict[str, str]) -> None:
    """Tab through the page; record a control in ``main`` that shows no focus outline."""
    page.locator("body").click(position={"x": 1, "y": 1})  # start from the top, no focus
    count = page.locator(FOCUSABLE).count()
    bad: list[str] = []
    reached = 0
    for _ in range(count + 12):  # the skip link and the navigation come first
        page.keyboard.press("Tab")
        tag, inside, outline, width, label = page.evaluate(
            "() => { const e = document.activeElement, s = getComputedStyle(e);"
            " return [e.tagName, !!e.closest('main'), s.outlineStyle, s.outlineWidth,"
            " (e.innerText || e.name || e.id || '').trim().slice(0, 40)]; }"
        )
        if inside:
            reached += 1
            if outline == "none" or width == "0px":
                bad.append(f"{tag} {label!r}: outline {outline} {width}")
    if count and not reached:
        bad.append("Tab never reached a control of the page")
    if bad:
        found[f"{name} (focus)"] = "\n".join(dict.fromkeys(bad))  # Tab wraps around


def password_form(
    page: Page, live: LiveServer, link: str, lands: str, button: str, found: dict[str, str]
) -> None:
    """Open a mailed link's password form; check it, its focus, then its errors shown."""
    page.goto(live.url + link)
    expect(page).to_have_url(live.url + lands, timeout=T)  # the token left the URL
    check(page, lands, found)
    check_focus(page, lands, found)
    page.get_by_label("password", exact=False).first.fill("short")
    page.get_by_label("Repeat", exact=False).fill("different")
    page.get_by_role("button", name=button).click()
    expect(page.locator("[aria-invalid=true]").first).to_be_visible(timeout=T)
    check(page, f"{lands} (errors)", found)


def test_account_auth_and_automation_pages_pass_axe(
    browser: Browser, page: Page, live_server: LiveServer
) -> None:
    """Every page added since the first audit, in its interesting states, has no serious or
    critical violation, shows keyboard focus on its forms, and exposes its progress bars."""
    live = live_server
    found: dict[str, str] = {}

    s = seed_account(page, live, "axe2@example.com")
    email = "axe2@example.com"

    anonymous = browser.new_context(viewport=VIEWPORT)
    try:
        visitor = anonymous.new_page()
        visitor.goto(live.url + "/password/forgot")
        expect(visitor.get_by_role("heading", level=1)).to_be_visible(timeout=T)
        check(visitor, "/password/forgot", found)
        check_focus(visitor, "/password/forgot", found)
        visitor.get_by_label("E-mail").fill(email)
        visitor.get_by_role("button", name="Send reset link").click()
        expect(
            visitor.get_by_role("status").filter(has_text="we have sent it a link")
        ).to_be_visible(timeout=T)
        check(visitor, "/password/forgot (sent)", found)
        reset = mailed_link(outbox_messages(live.app, 2)[-1], "/password/reset/")
        password_form(visitor, live, reset, "/password/reset", "Set new password", found)

        # The sign-up completion page from a fresh link, with its errors, then a dead link.
        visitor.goto(live.url + "/signup")
        visitor.get_by_label("E-mail").fill("newcomer@example.com")
        visitor.get_by_role("button", name="Create account").click()
        expect(visitor.get_by_role("heading", name="Check your e-mail")).to_be_visible(timeout=T)
        check(visitor, "/signup (sent)", found)
        signup = mailed_link(outbox_messages(live.app, 3)[-1], "/signup/")
        password_form(visitor, live, signup, "/signup/complete", "Create account", found)
        visitor.goto(live.url + mailed_link(outbox_messages(live.app)[0], "/signup/"))
        expect(visitor.get_by_role("heading", level=1)).to_be_visible(timeout=T)
        check(visitor, "/signup/complete (used link)", found)

        live.app.config["SIGNUP"] = "closed"
        visitor.goto(live.url + "/signup")
        expect(visitor.get_by_role("heading", level=1)).to_be_visible(timeout=T)
        check(visitor, "/signup (closed)", found)
        live.app.config["SIGNUP"] = "open"
    finally:
        anonymous.close()

    # Settings: a failed file waiting for its next try, failing long enough for the banner.
    long_ago = datetime.now(UTC) - timedelta(days=3)
    set_file(live, s.user_id, s.files[BUSY], failure_kind="transient", sync_attempts=2,
             next_attempt_at=datetime.now(UTC) + timedelta(minutes=20),
             failing_since=long_ago)  # fmt: skip
    page.goto(live.url + "/settings/onedrive/")
    expect(page.locator(f"#pending-{s.files[BUSY]} .next-try")).to_contain_text(
        "(attempt 3)", timeout=T
    )
    expect(page.locator("#sync-notice")).to_contain_text("not reached OneDrive", timeout=T)
    expect(page.locator("#automation-state")).to_contain_text("On", timeout=T)
    check(page, "/settings/onedrive/ (retry, banner, automation on)", found)
    check_focus(page, "/settings/onedrive/", found)
    page.locator("#pause-sync").click()
    expect(page.locator("#resume-sync")).to_be_visible(timeout=T)
    check(page, "/settings/onedrive/ (paused)", found)
    page.locator("#resume-sync").click()
    expect(page.locator("#pause-sync")).to_be_visible(timeout=T)
    page.locator("#autosync-enabled").uncheck()
    page.locator("#automation").get_by_role("button", name="Save").click()
    expect(page.locator("#autosync-enabled")).not_to_be_checked(timeout=T)
    check(page, "/settings/onedrive/ (automatic sync off)", found)

    # Account pages.
    for path in ("/account/", "/account/activity", f"/files/{s.files[BUSY]}/history"):
        page.goto(live.url + path)
        expect(page.get_by_role("heading", level=1)).to_be_visible(timeout=T)
        check(page, path, found)
    page.goto(live.url + "/account/security")
    expect(page.get_by_role("heading", name="Account security")).to_be_visible(timeout=T)
    check(page, "/account/security", found)
    check_focus(page, "/account/security", found)
    page.goto(live.url + "/account/delete")
    expect(page.get_by_role("heading", level=1)).to_be_visible(timeout=T)
    check(page, "/account/delete", found)
    check_focus(page, "/account/delete", found)
    page.get_by_label("Enter your password to confirm").fill("not my password")
    page.get_by_role("button", name="Delete my account and all my files").click()
    expect(page.locator("#password-error")).to_contain_text("not your current password")
    check(page, "/account/delete (wrong password)", found)

    page.goto(live.url + "/account/export")
    expect(page.get_by_role("heading", name="Download all my data")).to_be_visible(timeout=T)
    check(page, "/account/export", found)
    check_focus(page, "/account/export", found)
    # A background export half way through (a job row no worker holds, so it stays running).
    with live.app.app_context():
        job = ExportJob(user_id=s.user_id, status="running", files_total=5, files_done=2,
                        bytes_total=2_000_000, bytes_done=900_000)  # fmt: skip
        db.session.add(job)
        db.session.commit()
        job_id = job.id
    page.goto(live.url + "/account/export")
    bar = page.get_by_role("progressbar", name="Export progress")
    expect(bar).to_be_visible(timeout=T)
    check(page, "/account/export (running)", found)
    with live.app.app_context():
        row = db.session.get(ExportJob, job_id)
        assert row is not None
        row.status, row.error = "failed", "The export could not be built."
        db.session.commit()
    page.goto(live.url + "/account/export")
    expect(page.locator("#export-status .error")).to_be_visible(timeout=T)
    check(page, "/account/export (failed)", found)
    live.app.config["EXPORT_INLINE_MB"] = 0
    page.reload()
    page.get_by_role("button", name="Download all my data").click()
    expect(page.get_by_role("link", name="Download the zip")).to_be_visible(timeout=T)
    check(page, "/account/export (ready)", found)

    # The connection needs reconnecting: the other banner, on every page.
    with live.app.app_context():
        integration = db.session.execute(
            db.select(Integration).where(Integration.user_id == s.user_id)
        ).scalar_one()
        integration.status, integration.status_reason = "needs_reauth", "Token expired."
        db.session.commit()
    for path in ("/library/", "/settings/onedrive/"):
        page.goto(live.url + path)
        expect(page.locator("#sync-notice")).to_contain_text("sign in again", timeout=T)
        check(page, f"{path} (reconnect banner)", found)

    assert not found, "axe or the focus check found problems:\n" + "\n\n".join(
        f"== {name}\n{text}" for name, text in found.items()
    )
