"""A real user in headless Chromium: sign up, connect OneDrive, upload, Sync All, browse, import,
lose consent, reconnect, disconnect; and Sync All again with JavaScript switched off.

The sync runs on the in-process ``thread`` backend, so the page sees the run progress live.
The emulator throttles some Graph requests (429 + Retry-After: 1) during Sync All, as a busy
Microsoft would: the run then lasts a few seconds and the progress is observable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.conftest import mailed_link, outbox_messages

from .conftest import ALEX, VIEWPORT, LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

T = 30_000  # ms: the longest any single expectation may wait
PASSWORD = "correct horse battery staple"
BIG, TEXT, PDF = "holiday-video.bin", "notes.txt", "report.pdf"
BIG_SIZE = 12 * 1024 * 1024
PHONE, PHONE_BYTES = "from-phone.jpg", b"\xff\xd8\xff\xe0 a photo taken on a phone"

# Remember every value #run-progress shows, without reloading (the page keeps this state only
# as long as it is not reloaded, so it doubles as the no-reload marker).
WATCH_PROGRESS = """(name) => {
  window.__marker = 1;
  window.__seen = [];
  window.__fileBars = [];
  window.__watch = setInterval(() => {
    // While running, the bar; once the run has ended, its summary (data-percent="100").
    const bar = document.getElementById('run-progress') || document.getElementById('run-summary');
    if (bar) {
      const v = Number(bar.tagName === 'PROGRESS' ? bar.value : bar.dataset.percent);
      if (window.__seen.length === 0 || window.__seen[window.__seen.length - 1] !== v) {
        window.__seen.push(v);
      }
    }
    const file = document.querySelector(`#pending-files progress[aria-label="Upload of ${name}"]`);
    if (file) {
      const v = Number(file.value);
      const seen = window.__fileBars;
      if (seen.length === 0 || seen[seen.length - 1] !== v) seen.push(v);
    }
  }, 25);
}"""


def make_files(folder: Path) -> list[Path]:
    """Create the three files a user uploads: a 12 MiB random one, a text file and a PDF."""
    big = folder / BIG
    big.write_bytes(os.urandom(BIG_SIZE))
    text = folder / TEXT
    text.write_text("Shopping list\n- milk\n- bread\n", encoding="utf-8")
    pdf = folder / PDF
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n")
    return [big, text, pdf]


def sign_up(page: Page, live: LiveServer, email: str) -> None:
    """Create an account through the form; land in the (empty) library."""
    page.goto(live.url + "/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Create account").click()
    page.get_by_label("E-mail").fill(email)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your e-mail")).to_be_visible(timeout=T)
    # The link arrives in the development outbox (instance/outbox/), as ./bin/run says.
    page.goto(live.url + mailed_link(outbox_messages(live.app)[-1], "/signup/"))
    page.get_by_label("Password", exact=False).first.fill(PASSWORD)
    page.get_by_label("Repeat password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/library/"), timeout=T)
    expect(page.get_by_role("heading", name="Your library")).to_be_visible(timeout=T)
    expect(page.locator(".who")).to_have_text(email, timeout=T)


def open_settings(page: Page) -> None:
    """Open OneDrive settings from the navigation."""
    nav = page.get_by_role("navigation", name="Main")
    nav.get_by_role("link", name="OneDrive settings").click()
    expect(page.get_by_role("heading", name="OneDrive settings", level=1)).to_be_visible(timeout=T)


def consent_as_alex(page: Page, live: LiveServer, shot: str | None = None) -> None:
    """On the emulator's consent page, pick Alex and Accept."""
    expect(page).to_have_url(re.compile("^" + re.escape(live.emulator_url)), timeout=T)
    expect(page.get_by_role("heading", name="Permissions requested")).to_be_visible(timeout=T)
    page.get_by_role("radio", name=re.compile(re.escape(ALEX))).check()
    if shot:
        live.shot(page, shot, doc=True)
    page.get_by_role("button", name="Accept").click()
    expect(page).to_have_url(
        re.compile("^" + re.escape(live.url) + "/settings/onedrive/"), timeout=T
    )


def badge(page: Page) -> Locator:
    """The connection card's status badge."""
    return page.locator("#connection-badge")


def upload(page: Page, files: list[Path]) -> None:
    """Upload files from the library page's form."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Library").click()
    expect(page.get_by_role("heading", name="Your library")).to_be_visible(timeout=T)
    page.get_by_label("Add files").set_input_files([str(f) for f in files])
    page.get_by_role("button", name="Upload").click()
    table = page.locator("#library table.files")
    for f in files:
        expect(table.get_by_role("link", name=f.name, exact=True)).to_be_visible(timeout=T)


def test_connect_upload_sync_browse_import_reconnect_disconnect(
    page: Page, live_server: LiveServer, tmp_path: Path
) -> None:
    live, emu = live_server, live_server.emu
    files = make_files(tmp_path)

    # Sign up, open settings from the navigation: not connected yet.
    sign_up(page, live, "sam@example.com")
    open_settings(page)
    expect(badge(page)).to_have_text("Not connected", timeout=T)
    expect(page.locator("#pending")).to_have_count(0)
    live.shot(page, "settings-not-connected")

    # Connect through the emulator's consent page.
    page.get_by_role("button", name="Connect OneDrive").click()
    consent_as_alex(page, live, shot="consent-page")
    expect(badge(page)).to_have_text("Connected", timeout=T)
    expect(page.locator("#flashes")).to_contain_text(f"OneDrive connected as {ALEX}", timeout=T)
    expect(page.locator("#connection")).to_contain_text("folder /drivesync", timeout=T)
    expect(page.locator("#sync-all")).to_be_disabled(timeout=T)  # nothing to sync yet

    # Upload three files at once.
    upload(page, files)
    expect(page.locator("#library caption")).to_have_text("3 files", timeout=T)
    live.shot(page, "library", doc=True)

    # Back to settings: all three pending.
    open_settings(page)
    expect(page.locator("#count-pending")).to_have_text("3", timeout=T)
    rows = page.locator("#pending-files tbody tr")
    expect(rows).to_have_count(3, timeout=T)
    for f in files:
        row = rows.filter(has_text=f.name)
        expect(row).to_have_attribute("data-status", "not_synced", timeout=T)
    expect(page.locator("#pending-files caption")).to_have_text("3 files not in OneDrive yet")
    expect(page.locator("#sync-all")).to_be_enabled(timeout=T)
    live.shot(page, "settings-connected-pending", doc=True)

    # Sync All: progress updates in place (htmx), no full page reload.
    emu.throttle(every=3, retry_after=1)  # a busy Microsoft: the run takes a few seconds
    page.evaluate(WATCH_PROGRESS, BIG)
    page.locator("#sync-all").click()
    expect(page.locator("#sync-all")).to_have_text("Syncing…", timeout=T)
    expect(page.locator("#sync-progress")).to_contain_text("Syncing", timeout=T)
    big_bar = page.get_by_role("progressbar", name=f"Upload of {BIG}")
    expect(big_bar).to_be_visible(timeout=T)
    live.shot(page, "settings-sync-in-progress", doc=True)
    # A better picture once the big file's bar has moved, if it moves while we look.
    page.wait_for_function(
        "(name) => { const b = document.querySelector("
        '`#pending-files progress[aria-label="Upload of ${name}"]`);'
        " return !b || Number(b.value) > 0; }",
        arg=BIG,
        timeout=T,
    )
    if big_bar.count() and 0 < int(big_bar.get_attribute("value") or 0) < 100:
        live.shot(page, "settings-sync-in-progress", doc=True)
    expect(page.locator("#run-summary")).to_have_attribute("data-percent", "100", timeout=T)
    expect(page.locator("#count-synced")).to_have_text("3", timeout=T)
    expect(page.locator("#all-synced")).to_be_visible(timeout=T)
    expect(page.locator("#all-synced")).to_have_text("Everything is in OneDrive.")
    expect(page.locator("#count-pending")).to_have_text("0", timeout=T)
    expect(page.locator("#run-summary")).to_contain_text("3 of 3 synced", timeout=T)
    emu.clear_faults()
    seen = page.evaluate("() => { clearInterval(window.__watch); return window.__seen; }")
    assert page.evaluate("window.__marker") == 1, "the page was reloaded during Sync All"
    file_bars = page.evaluate("window.__fileBars")
    print(f"overall progress seen: {seen}; {BIG} progress seen: {file_bars}")
    assert file_bars, f"no per-file progress bar was ever shown for {BIG}"
    assert file_bars == sorted(file_bars), f"{BIG} progress went backwards: {file_bars}"
    assert seen[0] < 100 and seen[-1] == 100, seen
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    live.shot(page, "settings-after-sync", doc=True)

    # The emulator holds the three files, with the right sizes, in /drivesync.
    items = {i["path"]: i for i in emu.list_items(ALEX) if not i.get("folder")}
    for f in files:
        path = f"/drivesync/{f.name}"
        assert path in items, sorted(items)
        assert items[path]["size"] == f.stat().st_size, (path, items[path])

    # A file added to the folder from elsewhere (say, a phone) shows up when browsing.
    emu.modify_item(ALEX, f"/drivesync/{PHONE}", PHONE_BYTES)
    page.get_by_role("link", name="Browse your OneDrive folder").click()
    expect(page.get_by_role("heading", name="OneDrive: /drivesync")).to_be_visible(timeout=T)
    remote = page.locator("#remote-rows")
    for name in [f.name for f in files] + [PHONE]:
        expect(remote.locator(f'tr[data-name="{name}"]')).to_be_visible(timeout=T)
    live.shot(page, "browse-onedrive", doc=True)
    # A file the library already tracks is marked and linked, not offered for import (issue 9).
    pdf_row = remote.locator(f'tr[data-name="{PDF}"]')
    expect(pdf_row.get_by_role("link", name="In your library")).to_have_attribute(
        "href", re.compile(r"/library/\d+/download$"), timeout=T
    )
    expect(pdf_row.get_by_role("button", name="Import to library")).to_have_count(0)
    # Importing the new one runs in the background; the row shows it, then links the library.
    remote = page.locator("#remote-rows")
    phone_row = remote.locator(f'tr[data-name="{PHONE}"]')
    phone_row.get_by_role("button", name="Import to library").click()
    expect(phone_row.locator(".import-status")).to_contain_text(
        f"Imported {PHONE} into your library.", timeout=T
    )
    phone_row.get_by_role("link", name="library").click()
    expect(page).to_have_url(re.compile(r"/library/"), timeout=T)
    expect(page.locator("#library caption")).to_have_text("4 files", timeout=T)
    row = page.locator("#library tr", has=page.get_by_role("link", name=PHONE, exact=True))
    expect(row.locator(".badge")).to_have_text("synced", timeout=T)
    live.shot(page, "library-after-import")

    # Microsoft withdraws consent: the next Graph call flags the connection.
    emu.revoke_consent(ALEX)
    open_settings(page)
    expect(badge(page)).to_have_text("Connected", timeout=T)  # nobody knows yet
    page.get_by_role("link", name="Browse your OneDrive folder").click()
    live.shot(page, "browse-after-revoke")
    open_settings(page)
    expect(badge(page)).to_have_text("Reconnect needed", timeout=T)
    expect(page.locator("#sync-all")).to_be_disabled(timeout=T)
    live.shot(page, "settings-reconnect-needed", doc=True)

    # Reconnect: consent again, connected again.
    page.get_by_role("button", name="Reconnect").click()
    consent_as_alex(page, live)
    expect(badge(page)).to_have_text("Connected", timeout=T)

    # Disconnect, after confirming.
    page.locator("#connection summary", has_text="Disconnect…").click()
    expect(page.get_by_role("button", name="Yes, disconnect")).to_be_visible(timeout=T)
    live.shot(page, "settings-disconnect-confirm")
    page.get_by_role("button", name="Yes, disconnect").click()
    expect(badge(page)).to_have_text("Not connected", timeout=T)
    expect(page.locator("#flashes")).to_contain_text("OneDrive disconnected", timeout=T)
    expect(page.get_by_role("button", name="Connect OneDrive")).to_be_visible(timeout=T)


def test_sync_all_without_javascript(
    browser: Browser, live_server: LiveServer, tmp_path: Path
) -> None:
    live, emu = live_server, live_server.emu
    context = browser.new_context(java_script_enabled=False, viewport=VIEWPORT)
    try:
        page = context.new_page()
        loads: list[str] = []
        page.on("load", lambda: loads.append(page.url))

        sign_up(page, live, "nojs@example.com")
        open_settings(page)
        page.get_by_role("button", name="Connect OneDrive").click()
        consent_as_alex(page, live)
        expect(badge(page)).to_have_text("Connected", timeout=T)

        upload(page, make_files(tmp_path))
        open_settings(page)
        expect(page.locator("#count-pending")).to_have_text("3", timeout=T)

        # A plain form POST; the page then refreshes itself (<noscript> meta refresh).
        emu.throttle(every=3, retry_after=1)
        page.locator("#sync-all").click()
        expect(page.locator("#sync-all")).to_have_text("Syncing…", timeout=T)
        expect(page.locator('#sync-progress meta[http-equiv="refresh"]')).to_have_count(1)
        live.shot(page, "nojs-sync-in-progress")
        before = len(loads)
        expect(page.locator("#all-synced")).to_have_text("Everything is in OneDrive.", timeout=T)
        expect(page.locator("#count-synced")).to_have_text("3", timeout=T)
        expect(page.locator("#run-summary")).to_contain_text("3 of 3 synced", timeout=T)
        expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)
        assert len(loads) > before, "the page never refreshed itself while the run was going"
        emu.clear_faults()
        live.shot(page, "nojs-after-sync")
    finally:
        context.close()
