"""Production entry point: ``gunicorn wsgi:app``; workers: ``celery -A wsgi.celery_app worker``."""

from drivesync import create_app
from drivesync.tasks import celery_init_app

app = create_app()
# The Celery app exists whatever TASK_BACKEND says, so a worker can always start from here.
celery_app = app.extensions.get("celery") or celery_init_app(app)
