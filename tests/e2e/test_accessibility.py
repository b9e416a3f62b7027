"""axe-core in the real Chromium: no serious or critical violation on any page.

axe-playwright-python ships axe-core inside its wheel (nothing downloads). The account is
connected and holds files in every state (a file refused for its name, a retryable failure, a
conflict, a synced file, a pending one), so the settings page shows all of its parts.
"""

from __future__ import annotations

from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from .conftest import VIEWPORT, LiveServer
from .seed import BAD_NAME, CLASH, SYNCED, seed_account
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

    page.goto(live.url + "/settings/onedrive/browse")
    expect(page.locator(f'tr[data-name="{SYNCED}"]')).to_contain_text("In your library")
    check(page, "/settings/onedrive/browse", found)
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
