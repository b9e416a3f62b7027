"""Issue 11 in Chromium: imports with progress; changes made on OneDrive's side on the page.

The second test needs delta's engine (``services/changes.check`` run by the scheduler): a file
renamed, deleted and edited "from another device" (the emulator's admin API) shows its new state
within one polling interval, and each action the state offers works.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from drivesync.extensions import db
from drivesync.models import File
from drivesync.scope import user_scope
from drivesync.services import scheduler

from .conftest import ALEX, LiveServer
from .seed import add_file, seed_account
from .test_browser import T

pytestmark = [pytest.mark.browser, pytest.mark.slow]

INTERVAL = 2  # seconds between two delta checks in the second test
PATH = "/drivesync/report.pdf"


def test_import_from_browse_shows_progress(page: Page, live_server: LiveServer) -> None:
    """A slow import shows its progress bar in the row, then links the new library file."""
    live = live_server
    seed_account(page, live, "importer@example.com")
    data = b"i" * (3 * 1024 * 1024)
    live.emu.modify_item(ALEX, "/drivesync/scan-big.bin", data)
    page.goto(live.url + "/settings/onedrive/browse")
    row = page.locator('tr[data-name="scan-big.bin"]')
    expect(row).to_be_visible(timeout=T)
    live.emu.set_latency(1500)  # every Graph request takes 1.5 s: the job runs for seconds
    try:
        row.get_by_role("button", name="Import to library").click()
        expect(row.get_by_role("progressbar")).to_be_visible(timeout=T)
        live.shot(page, "browse-import-progress")
        expect(row.locator(".import-status")).to_contain_text(
            "Imported scan-big.bin into your library.", timeout=T
        )
    finally:
        live.emu.set_latency(0)
    expect(row.get_by_role("progressbar")).to_have_count(0)
    href = row.get_by_role("link", name="scan-big.bin").get_attribute("href")
    assert href and re.fullmatch(r"/library/\d+/download", href)
    file_id = int(href.split("/")[2])
    with live.app.app_context():
        f = db.session.get(File, file_id)
        assert f is not None
        assert f.onedrive_sync_status == "synced" and f.size == len(data)
        stored = Path(live.app.config["STORAGE_DIR"], f.stored_path).read_bytes()
    assert stored == data


def _until(page: Page, url: str, check: Callable[[], bool], within: float) -> float:
    """Reload ``url`` until ``check()`` holds; return how long it took (fail after ``within``)."""
    start = time.monotonic()
    while True:
        page.goto(url)
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"the page did not change within {within} s")
        time.sleep(0.25)


def _row(page: Page, file_id: int) -> Any:
    return page.locator(f"#file-{file_id}")


def _says(page: Page, file_id: int, text: str) -> Callable[[], bool]:
    return lambda: text in (_row(page, file_id).text_content() or "")


def _badge(page: Page, file_id: int, text: str) -> Callable[[], bool]:
    return lambda: (_row(page, file_id).locator(".badge").text_content() or "") == text


def test_remote_rename_delete_and_edit_show_on_the_page(
    page: Page, live_server: LiveServer
) -> None:
    """Rename, then delete a synced file in OneDrive; then edit it twice. Each change shows
    within one interval, and each action of each state works from the library page."""
    live = live_server
    live.app.config["DELTA_INTERVAL_SECONDS"] = INTERVAL  # DRIVESYNC_DELTA_INTERVAL
    s = seed_account(page, live, "remote@example.com")
    fid = add_file(live, s.user_id, "report.pdf", b"%PDF-1.4 first")
    page.goto(live.url + "/settings/onedrive/")
    page.get_by_role("button", name="Sync All").click()
    expect(page.locator("#run-summary")).to_be_visible(timeout=T)
    ticker = scheduler.start_in_process(live.app, interval=0.5)
    library = live.url + "/library/"
    within = INTERVAL + 10  # one interval, and the check's own time
    try:
        # The first check enumerates the folder (the baseline); then the rename.
        page.goto(live.url + "/settings/onedrive/")
        status = page.locator("#remote-status")
        expect(status).to_contain_text("every 2 seconds", timeout=T)
        _until(page, live.url + "/settings/onedrive/",
               lambda: "not yet" not in (status.text_content() or ""), within)  # fmt: skip
        live.emu.rename_item(ALEX, PATH, "report-final.pdf")
        _until(page, library, _says(page, fid, "in OneDrive as /drivesync/report-final.pdf"),
               within)  # fmt: skip
        expect(_row(page, fid).locator(".badge")).to_have_text("synced")
        live.shot(page, "library-renamed-in-onedrive")

        # Deleted in OneDrive: ask (the default policy); keep it only here, then upload again.
        live.emu.delete_item(ALEX, "/drivesync/report-final.pdf")
        _until(page, library, _says(page, fid, "Deleted in OneDrive."), within)
        live.shot(page, "library-deleted-in-onedrive", doc=True)
        _row(page, fid).get_by_role("button", name="Keep only in the library").click()
        expect(page.locator("#flashes")).to_contain_text(
            "report.pdf is kept only in the library.", timeout=T
        )
        expect(_row(page, fid)).to_contain_text("Kept only in the library.", timeout=T)
        _row(page, fid).get_by_role("button", name="Upload again").click()
        expect(page.locator("#flashes")).to_contain_text(
            "report.pdf goes to OneDrive with the next sync.", timeout=T
        )
        expect(_row(page, fid)).not_to_contain_text("Kept only in the library.", timeout=T)
        page.goto(live.url + "/settings/onedrive/")
        if page.locator("#sync-all").is_enabled():
            page.get_by_role("button", name="Sync All").click()
        _until(page, library, _badge(page, fid, "synced"), within)
        assert PATH in [i["path"] for i in live.emu.list_items(ALEX)]

        # Edited in OneDrive: import OneDrive's version.
        live.emu.modify_item(ALEX, PATH, b"%PDF-1.4 edited on a phone")
        _until(page, library, _says(page, fid, "OneDrive has a newer version."), within)
        live.shot(page, "library-newer-in-onedrive")
        _row(page, fid).get_by_role("button", name="Import OneDrive's version").click()
        expect(page.locator("#flashes")).to_contain_text(
            "OneDrive's version of report.pdf", timeout=T
        )
        _until(page, library, _badge(page, fid, "synced"), within)
        with live.app.app_context(), user_scope(s.user_id):
            f = db.session.get(File, fid)
            assert f is not None and f.version == 2
            stored = Path(live.app.config["STORAGE_DIR"], f.stored_path).read_bytes()
        assert stored == b"%PDF-1.4 edited on a phone"

        # Edited again: keep the library's version (uploaded again, replacing OneDrive's).
        live.emu.modify_item(ALEX, PATH, b"%PDF-1.4 another edit, made on a tablet")
        _until(page, library, _says(page, fid, "OneDrive has a newer version."), within)
        _row(page, fid).get_by_role("button", name="Keep the library's version").click()
        expect(page.locator("#flashes")).to_contain_text(
            "The library's version is being uploaded, replacing OneDrive's copy.", timeout=T
        )
        _until(page, library, _badge(page, fid, "synced"), within)  # its own run, no Sync All
        with live.app.app_context(), user_scope(s.user_id):
            f = db.session.get(File, fid)
            assert f is not None
            library_hash = f.quick_xor_hash
        [there] = [i for i in live.emu.list_items(ALEX) if i["path"] == PATH]
        assert there["quickXorHash"] == library_hash  # the library's version replaced the edit
    finally:
        ticker.stop()
        scheduler.stop_in_process()
