"""In Chromium: upload a file and watch it reach OneDrive without pressing anything."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from drivesync.services import scheduler

from .conftest import ALEX, LiveServer
from .test_browser import T, badge, consent_as_alex, open_settings, sign_up, upload

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_an_upload_becomes_synced_by_itself(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    """Connect, upload one file, then only watch: its badge turns to synced, nothing pressed."""
    live = live_server
    live.app.config["AUTOSYNC_DEBOUNCE_SECONDS"] = 1
    scheduler.start_in_process(live.app, interval=2)  # what app.py starts
    try:
        sign_up(page, live, "auto@example.com")
        open_settings(page)
        page.get_by_role("button", name="Connect OneDrive").click()
        consent_as_alex(page, live)
        expect(badge(page)).to_have_text("Connected", timeout=T)
        expect(page.locator("#automation-state")).to_contain_text("On: new and changed files")

        photo = tmp_path / "scan-of-a-letter.pdf"
        photo.write_bytes(b"%PDF-1.4\n% a letter from the doctor\n%%EOF\n")
        upload(page, [photo])
        # On the settings page, just watch (the page polls by itself while a sync is coming).
        open_settings(page)
        expect(page.locator("#all-synced")).to_have_text("Everything is in OneDrive.", timeout=T)
        expect(page.locator("#count-synced")).to_have_text("1", timeout=T)
        names = [i["name"] for i in live.emu.list_items(ALEX) if not i["folder"]]
        assert photo.name in names
        expect(page.locator("#sync-all")).to_be_disabled(timeout=T)  # nothing left to sync
        # The library says the same after a reload.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Library").click()
        row = page.locator("#library tr", has_text=photo.name)
        expect(row.locator(".badge")).to_have_text(re.compile(r"^\s*synced\s*$"), timeout=T)
    finally:
        scheduler.stop_in_process()
