"""Helpers for the engine's tests (test_sync, test_runs, test_transfer) on FakeDrive."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from drivesync.extensions import db
from drivesync.models import File
from drivesync.scope import user_scope
from drivesync.services import library, sync
from drivesync.services.storage import LocalStorage
from tests.fakes import FakeDrive

MiB = 1024 * 1024


def row(file_id: int) -> File:
    """Return a fresh copy of a file row (inside the test's app context)."""
    db.session.expire_all()
    f = db.session.get(File, file_id)
    assert f is not None
    return f


def replace_bytes(app: Flask, owner_id: int, file_id: int, data: bytes) -> None:
    """Replace a file through the library service, in its own app context (as a request would)."""
    with app.app_context(), user_scope(owner_id):
        store = LocalStorage(app.config["STORAGE_DIR"])
        incoming = store.new_incoming()
        incoming.write(data)
        library.replace_file(owner_id, file_id, incoming, store)


def make_conflict(app: Flask, fake: FakeDrive, user: int, make_file: Callable[..., int]) -> int:
    """Return a synced file whose local and OneDrive copies then both changed (a conflict)."""
    fid = make_file(user, "notes.txt", b"version 1")
    with app.app_context(), user_scope(user):
        sync.request_sync(user)
        item_id = row(fid).onedrive_id
    assert item_id is not None
    fake.modify(item_id, b"edited on OneDrive")
    replace_bytes(app, user, fid, b"version 2 local")
    with app.app_context(), user_scope(user):
        sync.request_sync(user)
        assert row(fid).onedrive_sync_status == "conflict"
    return fid
