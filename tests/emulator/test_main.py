"""``python -m onedrive_emulator`` starts a server that answers, and refuses production."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

pytestmark = pytest.mark.emulator


def test_module_entry_point_serves_and_registers_clients() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onedrive_emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--client-id",
            "abc",
            "--client-secret",
            "xyz",
            "--redirect-uri",
            "http://x/cb",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DRIVESYNC_ENV": "development"},
    )
    try:
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert requests.get(f"{url}/_emulator/health", timeout=5).json() == {"ok": True}
        clients = requests.get(f"{url}/_emulator/clients", timeout=5).json()
        assert clients == [
            {
                "client_id": "abc",
                "redirect_uris": ["http://x/cb"],
                "app_name": "abc",
                "public": False,
            }
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_module_entry_point_refuses_production() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "onedrive_emulator", "--port", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "DRIVESYNC_ENV": "production"},
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "never enabled in production" in result.stderr
