"""A drivesync process as ``app.py`` runs it, without the web server: the in-process (thread)
task backend and the embedded scheduler, on the test's database and emulator.

``python -m tests.thread_app_process [USER_ID]``: with a user id it asks for that user's Sync All
at start. Tests SIGKILL it mid-upload and start it again.
"""

from __future__ import annotations

import sys
import time

from drivesync import create_app
from drivesync.scope import user_scope
from drivesync.services import scheduler, sync
from tests.emulator_drive import drive_factory


def main() -> None:
    """Run until killed."""
    app = create_app(
        {"TASK_BACKEND": "thread", "SYNC_DRIVE_FACTORY": drive_factory, "UPLOAD_FRAGMENT_MB": 5}
    )
    scheduler.start_in_process(app)
    if len(sys.argv) > 1:
        user_id = int(sys.argv[1])
        with app.app_context(), user_scope(user_id):
            sync.request_sync(user_id)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
