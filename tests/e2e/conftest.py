"""Fixtures for browser tests: Debian's Chromium, a live app server and its own emulator.

No browser is downloaded: pytest-playwright's launch arguments point at ``/usr/bin/chromium``
(never run ``playwright install`` on these machines). Each test gets a fresh emulator, a fresh
SQLite file and a live werkzeug server whose URL the emulator accepts as a redirect URI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from drivesync import create_app, tasks
from drivesync.extensions import db
from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.conftest import app_config

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
DOC_SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1200, "height": 900}
ALEX = "alex@contoso.example"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch Debian's Chromium instead of a downloaded browser."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """A 1200 px wide window: the width of the screenshots in docs/screenshots."""
    return {**browser_context_args, "viewport": VIEWPORT}


class _QuietHandler(WSGIRequestHandler):
    """Request handler without one access-log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


@dataclass
class LiveServer:
    """The running app, its emulator's admin API and where screenshots go."""

    url: str
    app: Flask
    emu: EmulatorAdmin
    emulator_url: str

    def shot(self, page: Any, name: str, doc: bool = False) -> Path:
        """Save a full-page screenshot to test-artifacts/e2e/.

        With ``DRIVESYNC_UPDATE_SCREENSHOTS=1`` the ``doc`` ones also refresh the README's
        pictures in docs/screenshots/ (a plain test run leaves the work tree clean).
        """
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if doc and os.environ.get("DRIVESYNC_UPDATE_SCREENSHOTS") == "1":
            DOC_SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOC_SHOTS / f"{name}.png")
        return path


@pytest.fixture
def e2e_emulator() -> Iterator[EmulatorServer]:
    """A private emulator for one test (clients are registered once the app's port is known)."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def live_server(tmp_path: Path, e2e_emulator: EmulatorServer) -> Iterator[LiveServer]:
    """Serve a fresh app (SQLite file, in-process ``thread`` sync worker) on a free port."""
    client_id, secret = "drivesync-e2e", secrets.token_urlsafe(16)
    emu_url = e2e_emulator.url
    app = create_app(
        app_config(
            tmp_path,
            f"sqlite:///{tmp_path / 'e2e.sqlite3'}",
            TASK_BACKEND="thread",
            UPLOAD_FRAGMENT_MB=5,
            MS_CLIENT_ID=client_id,
            MS_CLIENT_SECRET=secret,
            MS_AUTHORITY=emu_url,
            GRAPH_URL=emu_url + "/v1.0",
            EMULATOR_URL=emu_url,
        )
    )
    with app.app_context():
        db.create_all()
    server: BaseWSGIServer = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="e2e-live-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    emu = EmulatorAdmin(emu_url)
    emu.register_client(
        client_id, secret, [f"{url}/settings/onedrive/callback"], app_name="drivesync (e2e)"
    )
    try:
        yield LiveServer(url=url, app=app, emu=emu, emulator_url=emu_url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        tasks.shutdown(wait=True)
        emu.clear_faults()
        emu.close()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
