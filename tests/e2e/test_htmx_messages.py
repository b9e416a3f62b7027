"""In Chromium, every failing htmx action shows its message in the page's flash area.

htmx 2 does not swap 4xx/5xx answers; the app answers a refused htmx action 200 with the
message retargeted to #flashes. Each case changes the data behind the page's back (as another
tab or a finished run would), then clicks the now-stale button.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import sign_in_as

from .conftest import LiveServer
from .seed import BAD_NAME, BUSY, CLASH, WAITING, seed_account, set_file
from .test_browser import T, open_settings

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def flashes(page: Page):  # noqa: ANN201 - a Playwright Locator
    """The flash/message area every page has."""
    return page.locator("#flashes")


def test_failing_actions_show_their_message(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    live = live_server
    s = seed_account(page, live, "stale@example.com")
    open_settings(page)
    pending = page.locator("#pending-files")
    busy_row = pending.locator(f"#pending-{s.files[BUSY]}")
    expect(busy_row).to_have_attribute("data-status", "error", timeout=T)
    # A failed file refused for its name offers Rename, never Retry.
    bad_row = pending.locator(f"#pending-{s.files[BAD_NAME]}")
    expect(bad_row.get_by_role("button", name="Rename")).to_be_visible(timeout=T)
    expect(bad_row.get_by_role("button", name="Retry")).to_have_count(0)
    page.evaluate("window.__marker = 1")

    # Retry (409): the file was retried elsewhere meanwhile.
    set_file(live, s.user_id, s.files[BUSY], onedrive_sync_status="not_synced", onedrive_error=None)
    busy_row.get_by_role("button", name="Retry").click()
    expect(flashes(page)).to_contain_text(
        "Only a file that failed to sync can be retried.", timeout=T
    )
    # The refused answer also brought the fresh list: the row no longer offers Retry.
    expect(busy_row).to_have_attribute("data-status", "not_synced", timeout=T)
    live.shot(page, "htmx-retry-refused")

    # Resolve (409): the conflict was settled elsewhere.
    clash_row = pending.locator(f"#pending-{s.files[CLASH]}")
    set_file(live, s.user_id, s.files[CLASH], onedrive_sync_status="not_synced")
    clash_row.get_by_role("button", name="Skip").click()
    expect(flashes(page)).to_contain_text("This file is not in conflict.", timeout=T)

    # Rename to a name OneDrive refuses too (400).
    bad_row.get_by_label(f"New name for {BAD_NAME}").fill("still:bad.txt")
    bad_row.get_by_role("button", name="Rename").click()
    expect(flashes(page)).to_contain_text("OneDrive does not allow these characters", timeout=T)

    # CSRF failure: the page's token went stale.
    page.evaluate(
        """() => {
          document.body.setAttribute('hx-headers', '{"X-CSRFToken": "stale"}');
          document.querySelectorAll('input[name=csrf_token]').forEach(i => i.value = 'stale');
        }"""
    )
    page.locator("#sync-all").click()
    expect(flashes(page)).to_contain_text("Your form expired", timeout=T)
    assert page.evaluate("window.__marker") == 1, "a failing action reloaded the page"

    # Rename to a valid name: the page reloads with the message; the file waits to sync.
    page.reload()
    bad_row.get_by_label(f"New name for {BAD_NAME}").fill("good name.txt")
    bad_row.get_by_role("button", name="Rename").click()
    expect(flashes(page)).to_contain_text(
        f"Renamed {BAD_NAME} to good name.txt. It waits for the next Sync All.", timeout=T
    )
    expect(bad_row).to_have_attribute("data-status", "not_synced", timeout=T)

    # Library: Delete (404) of a file deleted in another tab, and an upload over the limit (413).
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Library").click()
    page.evaluate("window.__marker = 2")
    row = page.locator(f"#file-{s.files[WAITING]}")
    with live.app.test_client() as other_tab:
        sign_in_as(other_tab, s.user_id)
        live.app.config["WTF_CSRF_ENABLED"] = False
        try:
            assert other_tab.post(f"/library/{s.files[WAITING]}/delete").status_code == 303
        finally:
            live.app.config["WTF_CSRF_ENABLED"] = True
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Delete").click()
    expect(flashes(page)).to_contain_text("That file does not exist.", timeout=T)

    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 4096)
    live.app.config["MAX_CONTENT_LENGTH"] = 1024
    page.get_by_label("Add files").set_input_files(str(big))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(flashes(page)).to_contain_text("File too large", timeout=T)
    assert page.evaluate("window.__marker") == 2, "a failing action reloaded the page"
    live.shot(page, "htmx-upload-refused")
