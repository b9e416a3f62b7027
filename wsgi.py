"""Production entry point: ``gunicorn wsgi:app``; workers: ``celery -A wsgi.celery_app worker``."""

import os

# Files the service creates (SQLite database, uploads, mail) are private to its user (L9).
os.umask(0o077)

from drivesync import create_app  # noqa: E402
from drivesync.tasks import celery_init_app  # noqa: E402

app = create_app()
# The Celery app exists whatever TASK_BACKEND says, so a worker can always start from here.
celery_app = app.extensions.get("celery") or celery_init_app(app)
