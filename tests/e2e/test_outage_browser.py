"""In Chromium: an outage longer than one request's retries ends synced with no user action."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from drivesync.graph.retry import Pacer
from drivesync.services import scheduler

from .conftest import ALEX, LiveServer
from .test_browser import T, badge, consent_as_alex, open_settings, sign_up, upload

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RETRY_BASE = 3  # seconds: SYNC_RETRY_BASE_SECONDS, the per-file schedule's first wait


def graph_answers(live: LiveServer, status: int) -> int:
    """Return how many Graph requests (admin calls excluded) the emulator answered ``status``."""
    return sum(
        1
        for r in live.emu.requests_log()
        if r["status"] == status and not r["path"].startswith("/_emulator")
    )


def test_an_outage_longer_than_the_retries_ends_synced_by_itself(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    """OneDrive answers 503 to everything for longer than one request retries; the file fails
    transiently, the page says when the next try is, and once OneDrive is back the scheduler
    takes the file again: the page shows it synced, and nothing was pressed after the upload."""
    live = live_server
    live.app.config["AUTOSYNC_DEBOUNCE_SECONDS"] = 1
    live.app.config["SYNC_RETRY_BASE_SECONDS"] = RETRY_BASE
    scheduler.start_in_process(live.app, interval=1)  # what app.py starts
    try:
        sign_up(page, live, "outage@example.com")
        open_settings(page)
        page.get_by_role("button", name="Connect OneDrive").click()
        consent_as_alex(page, live)
        expect(badge(page)).to_have_text("Connected", timeout=T)
        expect(page.locator("#automation-state")).to_contain_text("On: new and changed files")

        # OneDrive goes down: every Graph request answers 503 (Retry-After: 1) until it is back.
        live.emu.clear_requests_log()
        live.emu.fail(503, count=100_000, retry_after=1)
        letter = tmp_path / "blood-test-results.pdf"
        letter.write_bytes(b"%PDF-1.4\n% results from the lab\n%%EOF\n")
        upload(page, [letter])
        open_settings(page)  # from here on, only watch

        row = page.locator("#pending-files tr", has_text=letter.name)
        expect(row.locator(".badge")).to_have_text("failed", timeout=2 * T)
        expect(row.locator(".next-try")).to_have_text(
            re.compile(r"^Next try in less than a minute \(attempt 2\)$"), timeout=T
        )
        expect(row.locator(".reason")).to_be_visible()
        expect(row.get_by_role("button", name="Retry now")).to_be_visible()  # offered, not used
        # The one request was retried as often as its budget allows, and then gave up: the
        # outage outlasted one request's retries.
        assert graph_answers(live, 503) >= Pacer().max_attempts
        names = [i["name"] for i in live.emu.list_items(ALEX) if not i["folder"]]
        assert letter.name not in names

        # Still down past the file's first scheduled try: the scheduler tries again by itself,
        # fails again, and the page moves on to the next attempt without being touched.
        expect(row.locator(".next-try")).to_contain_text("(attempt 3)", timeout=2 * T)

        # OneDrive recovers. Nobody presses anything; the next scheduled try syncs the file.
        failed = graph_answers(live, 503)
        live.emu.clear_faults()
        recovered = time.monotonic()
        all_synced = page.locator("#all-synced")
        expect(all_synced).to_have_text("Everything is in OneDrive.", timeout=2 * T)
        expect(page.locator("#count-synced")).to_have_text("1", timeout=T)
        assert time.monotonic() - recovered < 2 * T / 1000
        names = [i["name"] for i in live.emu.list_items(ALEX) if not i["folder"]]
        assert names.count(letter.name) == 1
        assert graph_answers(live, 503) == failed  # no fault after recovery
        # The library says the same after a reload.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Library").click()
        lib_row = page.locator("#library tr", has_text=letter.name)
        expect(lib_row.locator(".badge")).to_have_text(re.compile(r"^\s*synced\s*$"), timeout=T)
    finally:
        scheduler.stop_in_process()
