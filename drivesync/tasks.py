"""Where background work runs: in-process threads, Celery on Redis, or inline (tests).

``TASK_BACKEND`` picks one:

- ``thread``: the embedded default. A process-wide ``ThreadPoolExecutor``; each job pushes its
  own app context, so ``python app.py`` needs nothing else running. Jobs die with the process;
  their claims are recovered as stale and their runs closed as abandoned.
- ``celery``: production, wired as Flask's "Background Tasks with Celery" page shows
  (``celery_init_app`` with a ``FlaskTask`` that pushes the app context). Workers start with
  ``celery -A wsgi.celery_app worker``. Nothing connects to the broker until a task is sent.
- ``eager``: run the job in the caller, synchronously (tests).

Jobs receive ids only; ``services/runs.py`` is safe to run twice, which ``acks_late`` relies on.
This module knows nothing of the services: it runs a job *by name* on the configured backend.
The job bodies (execute a run, tick, wake a user, build an export, import from OneDrive) are
handed to ``init_app`` by the app factory (``create_app``), which is also what registers them as
Celery tasks under the same names. So any service may import this module at its top and enqueue
(``enqueue_run``, ``enqueue_export``, ``enqueue_import``, ``wake_user``), and nothing here
imports a service: no import cycle.

Scheduling (services/scheduler.py): ``drivesync.tick`` runs one reconcile; Celery beat sends it
every ``SCHEDULER_INTERVAL_SECONDS`` (``celery -A wsgi.celery_app beat``, one process), and a
Redis lock per tick makes a second beat harmless. ``wake_user`` is the debounced wake-up of an
automatic sync: a Celery message with a countdown, or a nudge to the embedded scheduler thread.

Delivery guarantees on Redis (https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html):
``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged when its job
ends, so a worker that dies mid-run leaves it unacknowledged. Redis hands an unacknowledged
message to another worker only after the *visibility timeout*; it must exceed the longest run
and the longest countdown, or a live run would be delivered twice (harmless, since runs are
idempotent, but wasteful). We keep it at 6 hours and do not rely on it for recovery: the
scheduler re-queues a run whose heartbeat stopped within ``SYNC_STALE_SECONDS``. Without Redis
persistence a restart loses queued messages; the scheduler re-queues those runs too.
``worker_prefetch_multiplier=1``: a worker reserves one message per slot, so a message is never
parked behind a long run on a busy worker. A warm shutdown (SIGTERM) stops runs taking new files;
the uploads under way finish, and the run goes back to the queue for the next worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import worker_shutting_down
from flask import Flask, current_app

from .observability.logs import carry

logger = logging.getLogger(__name__)

EXECUTE_RUN = "drivesync.execute_run"
BUILD_EXPORT = "drivesync.build_export"
IMPORT = "drivesync.import_item"
TICK = "drivesync.tick"
WAKE_USER = "drivesync.wake_user"
TICK_LOCK = "drivesync:scheduler-tick"
VISIBILITY_TIMEOUT = 6 * 3600  # seconds; see the module docstring
BACKENDS = ("thread", "celery", "eager")
_EXTENSION = "drivesync.tasks"
_WIRING = "drivesync.tasks.wiring"
JOB_NAMES = (EXECUTE_RUN, BUILD_EXPORT, IMPORT, TICK, WAKE_USER)

_inline: ContextVar[bool] = ContextVar("drivesync_tasks_inline", default=False)
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class Wiring:
    """What the app factory hands this module: the job bodies by name, and two hooks."""

    jobs: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    #: The thread backend's wake-up: nudge the in-process scheduler ``delay`` seconds from now.
    nudge: Callable[[float], Any] | None = None
    #: Called on a Celery warm shutdown (runs stop taking new files).
    on_shutdown: Callable[[], Any] | None = None


def init_app(
    app: Flask,
    jobs: Mapping[str, Callable[..., Any]] | None = None,
    *,
    nudge: Callable[[float], Any] | None = None,
    on_shutdown: Callable[[], Any] | None = None,
) -> None:
    """Set up the configured task backend for ``app`` with the job bodies ``jobs`` (by name).

    Called again without ``jobs`` (tests switching backends), it keeps the wiring it had.
    """
    backend = app.config["TASK_BACKEND"]
    if backend not in BACKENDS:
        raise ValueError(f"TASK_BACKEND must be one of {BACKENDS}, got {backend!r}")
    if jobs is not None:
        unknown = set(jobs) - set(JOB_NAMES)
        if unknown:
            raise ValueError(f"unknown job names {sorted(unknown)}; known: {JOB_NAMES}")
        app.extensions[_WIRING] = Wiring(dict(jobs), nudge, on_shutdown)
    app.extensions.setdefault(_WIRING, Wiring())
    app.extensions[_EXTENSION] = backend
    if backend == "celery":
        celery_init_app(app)


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app for ``app`` (Flask's pattern) and store it in ``app.extensions``."""

    class FlaskTask(Task):
        """A task that runs inside the Flask app's context."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.import_name, task_cls=FlaskTask)
    interval = float(app.config["SCHEDULER_INTERVAL_SECONDS"])
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
        task_default_queue=app.config["CELERY_QUEUE"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        beat_schedule={
            "drivesync-tick": {
                "task": TICK,
                "schedule": interval,
                # A tick that waited longer than one interval is superseded by the next one.
                "options": {"expires": interval},
            }
        },
    )
    celery_app.conf.update(app.config.get("CELERY", {}))
    # shared=False: a shared task would be attached to every Celery app created later too.
    celery_app.task(name=EXECUTE_RUN, ignore_result=True, shared=False)(run_job)
    celery_app.task(name=BUILD_EXPORT, ignore_result=True, shared=False)(export_job)
    celery_app.task(name=IMPORT, ignore_result=True, shared=False)(import_job)
    celery_app.task(name=TICK, ignore_result=True, shared=False)(run_tick)
    celery_app.task(name=WAKE_USER, ignore_result=True, shared=False)(wake_job)
    on_shutdown = _wiring(app).on_shutdown

    def _on_worker_shutting_down(**_: Any) -> None:
        logger.info("warm shutdown: sync runs finish their uploads and go back to the queue")
        if on_shutdown is not None:
            on_shutdown()

    worker_shutting_down.connect(
        _on_worker_shutting_down, weak=False, dispatch_uid="drivesync-warm-shutdown"
    )
    app.extensions["celery"] = celery_app
    return celery_app


def _wiring(app: Flask | None = None) -> Wiring:
    app = app or current_app
    wiring: Wiring | None = app.extensions.get(_WIRING)
    return wiring or Wiring()


def _job(name: str) -> Callable[..., Any]:
    """Return the job body registered under ``name`` for the current app."""
    job = _wiring().jobs.get(name)
    if job is None:
        raise LookupError(f"no job {name!r} was handed to tasks.init_app")
    return job


def run_job(run_id: int, user_id: int, resolve: str | None = None) -> None:
    """Execute one sync run (inside an app context)."""
    _job(EXECUTE_RUN)(run_id, user_id, resolve=resolve)


def run_tick() -> None:
    """Run one scheduler tick, unless another beat's tick holds this interval's lock."""
    if not _tick_lock():
        logger.info("scheduler tick skipped: another one ran in this interval")
        return
    _job(TICK)()


def _tick_lock() -> bool:
    """Take the per-interval tick lock in Redis (SET NX PX); True when there is no Redis lock."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    ttl = int(float(app.config["SCHEDULER_INTERVAL_SECONDS"]) * 900)  # 0.9 interval, ms
    client = redis.Redis.from_url(app.config["CELERY_BROKER_URL"], socket_timeout=5)
    try:
        key = f"{TICK_LOCK}:{app.config['CELERY_QUEUE']}"
        return bool(client.set(key, "1", nx=True, px=max(ttl, 1)))
    except redis.RedisError:
        return True  # ticks are idempotent: better twice than never
    finally:
        client.close()


def wake_job(user_id: int) -> None:
    """Handle a debounced wake-up: reconcile one user (inside an app context)."""
    _job(WAKE_USER)(user_id)


def wake_user(user_id: int, delay: float) -> None:
    """Wake the scheduler for ``user_id`` in ``delay`` seconds (after an upload's debounce).

    Only a wake-up: the due time is already in the database, and the next tick finds it if
    this is lost. The eager backend sends nothing (tests tick by hand).
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    kind = backend(app)
    if kind == "celery":
        celery_app: Celery = app.extensions.get("celery") or celery_init_app(app)
        celery_app.send_task(WAKE_USER, args=[user_id], countdown=max(0.0, delay))
    elif kind == "thread" and (nudge := _wiring(app).nudge) is not None:
        nudge(delay)


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
            size = app.config["TASK_THREADS"]
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="drivesync-task")
        return _pool


def backend(app: Flask | None = None) -> str:
    """Return the task backend in force: eager inside ``inline()``, else the app's."""
    if _inline.get():
        return "eager"
    app = app or current_app
    return str(app.extensions.get(_EXTENSION) or app.config["TASK_BACKEND"])


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


def export_job(job_id: int, user_id: int) -> None:
    """Build one data export (inside an app context); safe to run twice (conditional claim)."""
    _job(BUILD_EXPORT)(job_id, user_id)


def import_job(job_id: int, user_id: int) -> None:
    """Run one import from OneDrive (inside an app context); safe to run twice."""
    _job(IMPORT)(job_id, user_id)


def _thread_named(app: Flask, name: str, job_id: int, user_id: int) -> None:
    with app.app_context():
        try:
            _job(name)(job_id, user_id)
        except Exception:
            logger.exception("background job %s %s failed", name, job_id)
            raise


def _enqueue_job(name: str, job_id: int, user_id: int) -> Future[None] | None:
    """Hand a (job id, user id) job to the configured backend, like ``enqueue_run``."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    kind = backend(app)
    if kind == "eager":
        _job(name)(job_id, user_id)
        return None
    if kind == "celery":
        celery_app: Celery = app.extensions.get("celery") or celery_init_app(app)
        celery_app.send_task(name, args=[job_id, user_id])
        return None
    return _executor(app).submit(carry(_thread_named), app, name, job_id, user_id)


def enqueue_export(job_id: int, user_id: int) -> Future[None] | None:
    """Hand a data export to the configured backend."""
    return _enqueue_job(BUILD_EXPORT, job_id, user_id)


def enqueue_import(job_id: int, user_id: int) -> Future[None] | None:
    """Hand an import from OneDrive to the configured backend."""
    return _enqueue_job(IMPORT, job_id, user_id)
