"""Production entry point: ``gunicorn wsgi:app``; Celery workers use ``wsgi.celery_app``."""

from drivesync import create_app

app = create_app()
