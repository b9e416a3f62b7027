"""Where background work runs: in-process threads, Celery on Redis, or inline (tests).

``TASK_BACKEND`` picks one:

- ``thread``: the embedded default. A process-wide ``ThreadPoolExecutor``; each job pushes its
  own app context, so ``python app.py`` needs nothing else running. Jobs die with the process;
  their claims are recovered as stale and their runs closed as abandoned.
- ``celery``: production, wired as Flask's "Background Tasks with Celery" page shows
  (``celery_init_app`` with a ``FlaskTask`` that pushes the app context). Workers start with
  ``celery -A wsgi.celery_app worker``. Nothing connects to the broker until a task is sent.
- ``eager``: run the job in the caller, synchronously (tests).

Jobs receive ids only; the sync service is safe to run twice, which ``acks_late`` relies on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery import Celery, Task
from flask import Flask, current_app

from .observability.logs import carry

logger = logging.getLogger(__name__)

EXECUTE_RUN = "drivesync.execute_run"
BACKENDS = ("thread", "celery", "eager")
_EXTENSION = "drivesync.tasks"

_inline: ContextVar[bool] = ContextVar("drivesync_tasks_inline", default=False)
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def init_app(app: Flask) -> None:
    """Set up the configured task backend for ``app``."""
    backend = app.config.get("TASK_BACKEND", "thread")
    if backend not in BACKENDS:
        raise ValueError(f"TASK_BACKEND must be one of {BACKENDS}, got {backend!r}")
    app.extensions[_EXTENSION] = backend
    if backend == "celery":
        celery_init_app(app)


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app for ``app`` (Flask's pattern) and store it in ``app.extensions``."""

    class FlaskTask(Task):  # type: ignore[misc]
        """A task that runs inside the Flask app's context."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.import_name, task_cls=FlaskTask)
    celery_app.conf.update(
        broker_url=app.config["CELERY_BROKER_URL"],
        task_ignore_result=True,  # progress lives in sync_runs, not in a result backend
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        # Redelivered if a worker dies mid-run: execute_run is idempotent (conditional claims).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=app.config.get("CELERY_QUEUE", "drivesync"),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    celery_app.conf.update(app.config.get("CELERY", {}))
    # shared=False: a shared task would be attached to every Celery app created later too.
    celery_app.task(name=EXECUTE_RUN, ignore_result=True, shared=False)(run_job)
    app.extensions["celery"] = celery_app
    return celery_app


def run_job(run_id: int, user_id: int, resolve: str | None = None) -> None:
    """Execute one sync run (inside an app context)."""
    from .services import sync

    sync.execute_run(run_id, user_id, resolve=resolve)


def _thread_job(app: Flask, run_id: int, user_id: int, resolve: str | None) -> None:
    with app.app_context():
        try:
            run_job(run_id, user_id, resolve)
        except Exception:
            logger.exception("background sync run %s failed", run_id)
            raise


def _executor(app: Flask) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            size = int(app.config.get("TASK_THREADS", 2))
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="drivesync-task")
        return _pool


def backend(app: Flask | None = None) -> str:
    """Return the task backend in force: eager inside ``inline()``, else the app's."""
    if _inline.get():
        return "eager"
    app = app or current_app
    return str(app.extensions.get(_EXTENSION) or app.config.get("TASK_BACKEND", "thread"))


@contextmanager
def inline() -> Iterator[None]:
    """Run jobs enqueued inside the block in the caller, whatever the backend (CLI commands)."""
    token = _inline.set(True)
    try:
        yield
    finally:
        _inline.reset(token)


def enqueue_run(run_id: int, user_id: int, *, resolve: str | None = None) -> Future[None] | None:
    """Hand a sync run to the configured backend (returns the Future on the thread backend)."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    kind = backend(app)
    if kind == "eager":
        run_job(run_id, user_id, resolve)
        return None
    if kind == "celery":
        celery_app: Celery = app.extensions.get("celery") or celery_init_app(app)
        celery_app.send_task(EXECUTE_RUN, args=[run_id, user_id, resolve])
        return None
    # carry(): the job's log records keep the enqueuing request's id (Celery: a message header).
    return _executor(app).submit(carry(_thread_job), app, run_id, user_id, resolve)


def shutdown(wait: bool = True) -> None:
    """Stop the process-wide thread pool (tests, clean exits); a later job starts a new one."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=wait)
