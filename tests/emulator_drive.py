"""The drive factory of test subprocesses: a drive on the test's emulator with a minted token.

The test hands the subprocess the emulator's URL and a bearer token minted there
(``DRIVESYNC_TEST_EMULATOR_URL``, ``DRIVESYNC_TEST_EMULATOR_TOKEN``).
"""

from __future__ import annotations

import os

from drivesync.graph.client import GraphClient
from drivesync.graph.drive import Drive, GraphDrive

EMULATOR_URL = os.environ.get("DRIVESYNC_TEST_EMULATOR_URL", "http://127.0.0.1:1")
TOKEN = os.environ.get("DRIVESYNC_TEST_EMULATOR_TOKEN", "")


def drive_factory(user_id: int) -> Drive:
    """Return a drive on the emulator, acting with the token the test minted."""
    return GraphDrive(GraphClient(lambda force: TOKEN, base_url=f"{EMULATOR_URL}/v1.0"))
