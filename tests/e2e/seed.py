"""A signed-up, connected account with files in every state, for the browser tests.

The user signs up and connects through the real pages (Chromium and the emulator's consent
page); the files are then added through the library service and put into their states directly
in the database, which is quicker than provoking each failure through a sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Page, expect

from drivesync.extensions import db
from drivesync.models import File, User
from drivesync.scope import user_scope
from drivesync.services import library
from drivesync.services.storage import LocalStorage

from .conftest import ALEX, LiveServer
from .test_browser import T, consent_as_alex, open_settings, sign_up

BAD_NAME = "bad:name.txt"
NAME_REASON = "OneDrive does not allow these characters in names: :"
BUSY, CLASH, SYNCED, WAITING = "busy.txt", "clash.txt", "synced.txt", "waiting.txt"
REMOTE_ONLY = "from-phone.txt"
CONFLICT_REASON = "Both this file and its OneDrive copy changed since the last sync."


@dataclass
class Seeded:
    """The seeded user and the ids of their files by name."""

    user_id: int
    files: dict[str, int] = field(default_factory=dict)


def add_file(live: LiveServer, user_id: int, name: str, data: bytes) -> int:
    """Add a file to the user's library through the service; return its id."""
    with live.app.app_context(), user_scope(user_id):
        store = LocalStorage(live.app.config["STORAGE_DIR"])
        incoming = store.new_incoming()
        incoming.write(data)
        return library.add_file(user_id, name, incoming, store).id


def set_file(live: LiveServer, user_id: int, file_id: int, **values: Any) -> None:
    """Change columns of one of the user's files behind the page's back."""
    with live.app.app_context(), user_scope(user_id):
        f = db.session.get(File, file_id)
        assert f is not None
        for key, value in values.items():
            setattr(f, key, value)
        db.session.commit()


def seed_account(page: Page, live: LiveServer, email: str) -> Seeded:
    """Sign up, connect Alex's OneDrive and add files: failed (name, busy), conflict, synced."""
    sign_up(page, live, email)
    open_settings(page)
    page.get_by_role("button", name="Connect OneDrive").click()
    consent_as_alex(page, live)
    expect(page.locator("#connection-badge")).to_have_text("Connected", timeout=T)
    with live.app.app_context():
        uid = db.session.execute(db.select(User.id).where(User.email == email)).scalar_one()
    seeded = Seeded(uid)
    for name in (BAD_NAME, BUSY, CLASH, SYNCED, WAITING):
        seeded.files[name] = add_file(live, uid, name, f"contents of {name}".encode())
    set_file(live, uid, seeded.files[BAD_NAME], onedrive_sync_status="error",
             onedrive_error=NAME_REASON)  # fmt: skip
    set_file(live, uid, seeded.files[BUSY], onedrive_sync_status="error",
             onedrive_error="OneDrive was busy; try again.")  # fmt: skip
    set_file(live, uid, seeded.files[CLASH], onedrive_sync_status="conflict",
             onedrive_error=CONFLICT_REASON)  # fmt: skip
    item = live.emu.modify_item(ALEX, f"/drivesync/{SYNCED}", f"contents of {SYNCED}".encode())
    set_file(live, uid, seeded.files[SYNCED], onedrive_sync_status="synced",
             onedrive_id=item["id"], onedrive_name=SYNCED)  # fmt: skip
    live.emu.modify_item(ALEX, f"/drivesync/{REMOTE_ONLY}", b"a note from a phone")
    return seeded
