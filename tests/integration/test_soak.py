"""The soak (bench/soak.py) in small: the whole production topology on this machine (gunicorn,
a Celery worker and beat, Redis, PostgreSQL under row-level security, the emulator over TLS, the
real OAuth flow) under eight faults, and every file arrives intact, once, with nobody pressing
anything. Runs in the SQLite pass only: it makes its own PostgreSQL database either way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.celery, pytest.mark.postgres, pytest.mark.emulator]

ROOT = Path(__file__).resolve().parents[2]


def _postgres_superuser() -> bool:
    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.mark.skipif(
    bool(os.environ.get("DRIVESYNC_TEST_POSTGRES_URL")),
    reason="runs once, in the SQLite pass (it creates its own PostgreSQL database)",
)
def test_soak_every_file_arrives_once_with_nobody_pressing_anything() -> None:
    """One user, eight waves of two files (one of 6 MiB, two fragments), one fault per wave."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    if not _postgres_superuser():
        pytest.skip("PostgreSQL is not reachable as postgres on 127.0.0.1:5432 (bin/services)")
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--users", "1", "--files", "16",
         "--big-mib", "6", "--timeout", "240"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    report = out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0, report
    assert "files intact on OneDrive : 16 of 16" in out.stdout, report
    assert "verdict                  : PASS" in out.stdout, report
