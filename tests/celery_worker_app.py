"""The Celery app a test worker runs: ``celery -A tests.celery_worker_app:celery_app worker``.

Built with ``create_app`` from the ``DRIVESYNC_*`` environment the test hands the subprocess
(database URL, storage folder, broker), plus three test-only variables: the emulator's URL, a
bearer token minted there, and the queue to consume. The worker's drives talk to the emulator.
"""

from __future__ import annotations

import os

from drivesync import create_app
from tests.emulator_drive import drive_factory

app = create_app(
    {
        "TASK_BACKEND": "celery",
        "SYNC_DRIVE_FACTORY": drive_factory,
        "CELERY_QUEUE": os.environ.get("DRIVESYNC_TEST_CELERY_QUEUE", "drivesync-test"),
        "UPLOAD_FRAGMENT_MB": 5,
    }
)
celery_app = app.extensions["celery"]  # create_app wired the job bodies (tasks.init_app)
