"""No token, code or secret reaches a page, a header, a flash or a log line during real use."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest

from drivesync.observability import logs
from onedrive_emulator.server import EmulatorServer
from tests.fixtures_emulator import ALEX, CLIENT_SECRET, csrf_from

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def _secrets(emulator: EmulatorServer) -> set[str]:
    """Return every credential the emulator has issued so far (tokens, codes, session ids)."""
    st = emulator.state
    with st.lock:
        return {*st.access_tokens, *st.refresh_tokens, *st.codes, *st.sessions}


def test_full_connect_and_sync_leaks_nothing(
    client, app, make_user, make_file, login, connect, emu, emulator, emulator_config, caplog
):
    """Connect, upload, sync (with a refresh and a big upload session), browse, import and
    disconnect: no credential appears in any response or log record."""
    caplog.set_level(logging.DEBUG)
    app.config.update(emulator_config)
    uid = make_user("leaks@example.com")
    login(uid)
    # Big enough for an upload session; added through the service because the test client
    # leaks its spooled temporary file for request bodies over 500 KB.
    make_file(uid, "big.bin", b"a" * 7 * 1024 * 1024)
    seen: set[str] = set()
    responses: list[Any] = []

    def get(path: str, **kw: Any) -> Any:
        r = client.get(path, **kw)
        responses.append(r)
        return r

    def post(path: str, **kw: Any) -> Any:
        r = client.post(path, **kw)
        responses.append(r)
        return r

    responses.append(connect(ALEX))
    seen |= _secrets(emulator)
    token = csrf_from(get("/settings/onedrive/").get_data(as_text=True))
    post(
        "/library/upload", data={"csrf_token": token, "files": [(io.BytesIO(b"note"), "note.txt")]}
    )
    emu.expire_access_tokens(0)  # the stored token dies: the sync meets a 401 and refreshes
    emu.expire_access_tokens(3600)  # … and the new one lives
    seen |= _secrets(emulator)
    post("/settings/onedrive/sync", data={"csrf_token": token})
    seen |= _secrets(emulator)
    assert "2 of 2 synced" in get("/settings/onedrive/").get_data(as_text=True)
    get("/settings/onedrive/progress", headers={"HX-Request": "true"})
    page = get("/settings/onedrive/browse").get_data(as_text=True)
    assert "big.bin" in page
    emu.modify_item(ALEX, "/drivesync/extra.txt", b"from elsewhere")
    page = get("/settings/onedrive/browse").get_data(as_text=True)
    item_id = page.split('data-name="extra.txt"', 1)[1].split('name="item_id" value="', 1)[1]
    post(
        "/settings/onedrive/import", data={"csrf_token": token, "item_id": item_id.split('"', 1)[0]}
    )
    seen |= _secrets(emulator)
    for path in ("/library/", "/settings/onedrive/"):
        get(path)
    post("/settings/onedrive/disconnect", data={"csrf_token": token})
    get("/settings/onedrive/")
    seen |= _secrets(emulator)
    seen.add(CLIENT_SECRET)
    assert len(seen) >= 6, "the run should have issued several tokens and codes"

    texts = []
    for r in responses:
        texts.append(r.get_data(as_text=True))
        texts.extend(f"{k}: {v}" for k, v in r.headers.items())
        r.close()
    for record in caplog.records:
        if record.name.startswith("onedrive_emulator"):
            continue  # Microsoft's side may log its own credentials; ours may not
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
        for fmt in ("json", "text"):  # what production (JSON) and development write
            texts.append(logs.formatter(fmt).format(record))
    with client.session_transaction() as sess:
        texts.append(repr(dict(sess)))  # the signed cookie's contents (flashes included)
    leaks = [(s[:8] + "…", t[:120]) for s in seen for t in texts if s and s in t]
    assert leaks == []
    assert any("big.bin" in t for t in texts)  # the pages were really captured
