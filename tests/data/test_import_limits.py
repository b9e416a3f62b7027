"""Imports from OneDrive count toward the upload limit and the quota (probe finding M2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drivesync.models import File
from tests.conftest import db_rows
from tests.fixtures_emulator import ALEX, consent, csrf_from

pytestmark = pytest.mark.emulator
MB = 1024 * 1024


@pytest.fixture
def app_overrides(emulator_config: dict[str, Any]) -> dict[str, Any]:
    """The emulator, a 1 MB upload limit and a 3 MB quota."""
    return {**emulator_config, "MAX_UPLOAD_MB": 1, "USER_QUOTA_MB": 3}


def _connected(app, make_user, signed_in) -> tuple[int, Any, str]:
    uid = make_user()
    client = signed_in(uid)
    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    r = client.post("/settings/onedrive/connect", data={"csrf_token": token})
    back = consent(r.headers["Location"], ALEX)
    assert client.get(back.split("localhost", 1)[1]).status_code == 303
    return uid, client, token


def _incoming(app) -> list[Path]:
    root = Path(app.config["STORAGE_DIR"])
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_import_larger_than_the_upload_limit_is_refused_before_download(
    app, make_user, signed_in, emu
):
    """A 2 MB OneDrive file is refused with a message under a 1 MB limit; nothing is stored."""
    uid, client, token = _connected(app, make_user, signed_in)
    item = emu.modify_item(ALEX, "/drivesync/scan-2mib.bin", b"x" * (2 * MB))
    emu.clear_requests_log()
    r = client.post("/settings/onedrive/import", data={"csrf_token": token, "item_id": item["id"]})
    assert r.status_code == 413
    assert "larger than the 1.0 MB upload limit" in r.get_data(as_text=True)
    log = [e["path"] for e in emu.requests_log()]
    assert any(item["id"] in path for path in log)  # the item was looked up …
    assert not any(path.endswith("/content") for path in log)  # … but never downloaded
    assert db_rows(app, File, uid) == []
    assert _incoming(app) == []


def test_import_over_the_quota_is_refused(app, make_user, make_file, signed_in, emu):
    """An import that fits the upload limit but not the quota left is refused; nothing is stored."""
    uid, client, token = _connected(app, make_user, signed_in)
    make_file(uid, "filler.bin", b"f" * (3 * MB - 100 * 1024))
    before = _incoming(app)
    item = emu.modify_item(ALEX, "/drivesync/small.bin", b"s" * (500 * 1024))
    r = client.post("/settings/onedrive/import", data={"csrf_token": token, "item_id": item["id"]})
    assert r.status_code == 413
    assert "only 100.0 KB of your 3.0 MB storage is left" in r.get_data(as_text=True)
    assert [f.original_name for f in db_rows(app, File, uid)] == ["filler.bin"]
    assert _incoming(app) == before
