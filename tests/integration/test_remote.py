"""Browse the OneDrive folder: items the library already tracks are marked, not importable."""

from __future__ import annotations

import re

import pytest

from drivesync import events
from drivesync.extensions import db
from drivesync.models import File
from drivesync.scope import user_scope
from tests.conftest import csrf_token, db_rows
from tests.fixtures_emulator import ALEX

pytestmark = pytest.mark.emulator


def row_of(html: str, name: str) -> str:
    """Return the browse table row of the item called ``name``."""
    match = re.search(rf'<tr data-name="{re.escape(name)}">(.*?)</tr>', html, re.S)
    assert match, f"no row for {name}"
    return match.group(1)


def test_browse_marks_items_in_the_library(client, app, alice, make_file, emu):
    """A synced file shows 'In your library' linked to it; a OneDrive-only file offers Import."""
    fid = make_file(alice, "report.pdf", b"%PDF-1.4 report")
    r = client.post("/settings/onedrive/sync", data={"csrf_token": csrf_token(client)})
    assert r.status_code == 303
    [f] = db_rows(app, File, alice)
    assert f.onedrive_sync_status == "synced"
    emu.modify_item(ALEX, "/drivesync/from-phone.jpg", b"a photo")

    html = client.get("/settings/onedrive/browse").get_data(as_text=True)
    tracked = row_of(html, "report.pdf")
    assert "In your library" in tracked
    assert f'href="/library/{fid}/download"' in tracked
    assert "Import to library" not in tracked
    remote_only = row_of(html, "from-phone.jpg")
    assert "Import to library" in remote_only and "In your library" not in remote_only


def test_browse_names_the_library_file_when_names_differ(client, app, alice, make_file, emu):
    """An item tracked under another library name says which file it is."""
    item = emu.modify_item(ALEX, "/drivesync/scan.pdf", b"scanned")
    fid = make_file(alice, "tax return 2025.pdf", b"scanned")
    with app.app_context(), user_scope(alice):
        f = db.session.get(File, fid)
        f.onedrive_id, f.onedrive_sync_status = item["id"], "synced"
        db.session.commit()
    row = row_of(client.get("/settings/onedrive/browse").get_data(as_text=True), "scan.pdf")
    assert "In your library" in row and "as tax return 2025.pdf" in row


def test_import_sends_file_imported_not_uploaded(client, app, alice, emu):
    """Importing a OneDrive file announces file_imported (with the item id), not an upload."""
    item = emu.modify_item(ALEX, "/drivesync/from-phone.jpg", b"a photo")
    imported, uploaded = [], []
    with (
        events.file_imported.connected_to(lambda s, **kw: imported.append(kw)),
        events.file_uploaded.connected_to(lambda s, **kw: uploaded.append(kw)),
    ):
        r = client.post(
            "/settings/onedrive/import",
            data={"csrf_token": csrf_token(client), "item_id": item["id"]},
        )
    assert r.status_code == 303
    [f] = db_rows(app, File, alice)
    assert imported == [{"user_id": alice, "file_id": f.id, "item_id": item["id"], "size": 7}]
    assert uploaded == []
