"""A run's heartbeat: proof, written from its own thread, that a worker is still on the run.

``execute_run`` wraps its file loop in :class:`RunHeartbeat`. Every ``SYNC_STALE_SECONDS / 3``
the thread stamps ``sync_runs.heartbeat_at`` (the claims of its files have their own beat, from
``services/heartbeats.py``), so a run whose fragments take minutes never looks dead, and a worker
that died (SIGKILL, power, OOM) stops stamping: the scheduler then recovers its claims and queues
the run again once the stamps are older than ``SYNC_STALE_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from flask import Flask
from sqlalchemy import update

from .. import tasks
from ..extensions import db
from ..models import SyncRun, utcnow
from ..scope import user_scope
from .transfer import changed

logger = logging.getLogger(__name__)

_shutting_down = threading.Event()


def begin_shutdown() -> None:
    """Mark this process as stopping (Celery's warm shutdown): runs take no new files."""
    _shutting_down.set()


def stopping() -> bool:
    """Return whether this process is shutting down."""
    return _shutting_down.is_set()


class RunHeartbeat:
    """Stamp a running run from a daemon thread until the block ends."""

    def __init__(self, app: Flask, run_id: int, user_id: int, every: float | None = None) -> None:
        self.app = app
        self.run_id = run_id
        self.user_id = user_id
        stale = float(app.config["SYNC_STALE_SECONDS"])
        self.every = every or max(0.5, stale / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"run-heartbeat-{run_id}", daemon=True
        )

    def __enter__(self) -> RunHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def beat(self) -> None:
        """Stamp the run now (inside an app context and the user's scope)."""
        now = utcnow()
        db.session.execute(
            update(SyncRun)
            .where(
                SyncRun.id == self.run_id,
                SyncRun.user_id == self.user_id,
                SyncRun.status == "running",
            )
            .values(heartbeat_at=now)
        )
        db.session.commit()

    def _loop(self) -> None:
        with self.app.app_context(), user_scope(self.user_id):
            try:
                while not self._stop.wait(self.every):
                    try:
                        self.beat()
                    except Exception:  # a missed beat is survivable; a dead thread is not
                        logger.warning("heartbeat of run %s failed", self.run_id)
                        db.session.rollback()
            finally:
                db.session.remove()


def requeue_run(run_id: int, user_id: int) -> SyncRun | None:
    """Put a running run back in the queue (its worker is stopping) and send it there again."""
    moved = changed(
        update(SyncRun)
        .where(SyncRun.id == run_id, SyncRun.user_id == user_id, SyncRun.status == "running")
        .values(status="queued", enqueued_at=utcnow())
    )
    db.session.commit()
    if moved:
        logger.info("run %s goes back to the queue (worker shutting down)", run_id)
        try:
            tasks.enqueue_run(run_id, user_id)
        except Exception:  # queued in the database: the scheduler sends it again
            logger.warning("could not queue run %s again; the scheduler will", run_id)
    return db.session.get(SyncRun, run_id)
