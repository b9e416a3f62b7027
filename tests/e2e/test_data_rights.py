"""A real user in headless Chromium downloads all their data (streamed, then in the background)
and deletes their account, which disconnects OneDrive and leaves nothing of them behind."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from drivesync.extensions import db
from drivesync.models import File, Integration, OAuthToken, User

from .conftest import LiveServer
from .test_browser import PASSWORD, T, consent_as_alex, open_settings, sign_up, upload

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _account_link(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Account").click()
    page.get_by_role("navigation", name="Account").get_by_role("link", name=name).click()


def _download_zip(page: Page, trigger) -> zipfile.ZipFile:
    with page.expect_download(timeout=T) as info:
        trigger()
    return zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes()))


def test_export_and_delete_account(page: Page, live_server: LiveServer, tmp_path: Path) -> None:
    """Export matches the library byte for byte; deletion leaves no row, byte or token."""
    live = live_server
    files = {"blood-test.pdf": b"%PDF-1.4 results", "x-ray.png": b"\x89PNG x-ray bytes"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    sign_up(page, live, "pat@example.com")
    open_settings(page)
    page.get_by_role("button", name="Connect OneDrive").click()
    consent_as_alex(page, live)
    upload(page, [tmp_path / n for n in files])
    expect(page.locator("#storage-usage")).to_contain_text("used", timeout=T)

    # A small export streams at once.
    _account_link(page, "Download all my data")
    expect(page.get_by_role("heading", name="Download all my data")).to_be_visible(timeout=T)
    zf = _download_zip(
        page, lambda: page.get_by_role("button", name="Download all my data").click()
    )
    for name, data in files.items():
        assert zf.read(f"files/{name}") == data
    manifest = json.loads(zf.read("drivesync-export.json"))
    assert manifest["account"]["email"] == "pat@example.com"

    # A large one runs in the background: progress, then a link.
    live.app.config["EXPORT_INLINE_MB"] = 0
    page.reload()
    page.get_by_role("button", name="Download all my data").click()
    link = page.get_by_role("link", name="Download the zip")
    expect(link).to_be_visible(timeout=T)
    live.shot(page, "account-export-ready")
    zf = _download_zip(page, link.click)
    assert sorted(zf.namelist()) == sorted(
        ["drivesync-export.json", *(f"files/{n}" for n in files)]
    )

    # Activity lists the exports.
    _account_link(page, "Activity")
    expect(page.locator("table.activity")).to_contain_text(
        "You downloaded an export of all your data.", timeout=T
    )

    # Delete: a wrong password changes nothing, the right one deletes everything.
    _account_link(page, "Delete my account")
    expect(page.get_by_text("Copies on OneDrive stay.")).to_be_visible(timeout=T)
    live.shot(page, "account-delete")
    page.get_by_label("Enter your password to confirm").fill("not my password")
    page.get_by_role("button", name="Delete my account and all my files").click()
    expect(page.locator("#password-error")).to_contain_text("not your current password")
    page.get_by_label("Enter your password to confirm").fill(PASSWORD)
    page.get_by_role("button", name="Delete my account and all my files").click()
    expect(page).to_have_url(re.compile(r"/login"), timeout=T)
    expect(page.locator("#flashes")).to_contain_text("were deleted", timeout=T)

    with live.app.app_context():
        for model in (User, File, Integration, OAuthToken):
            assert db.session.execute(db.select(db.func.count()).select_from(model)).scalar() == 0
    storage = Path(live.app.config["STORAGE_DIR"])
    assert [p for p in storage.rglob("*") if p.is_file()] == []

    page.get_by_label("E-mail").fill("pat@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Incorrect e-mail or password.")).to_be_visible(timeout=T)
