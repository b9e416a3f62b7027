"""The scheduler: a periodic reconcile of every user with due work.

One tick is one query for the users with due work (:data:`DUE_USERS_SQL`, served by indexes),
then, per user and under ``user_scope``, :func:`reconcile_user`:

1. recover stale claims: files left ``syncing`` by a worker that stopped heartbeating go back to
   ``not_synced``;
2. recover runs: a ``queued`` run whose message was lost (Redis restarted, the process died) and a
   ``running`` run whose worker is gone are queued again (the run resumes where it stopped; runs
   are safe to execute twice); after :data:`MAX_REQUEUES` it is closed as interrupted; import
   jobs (``services/imports.py``) are recovered the same way;
3. start due work in one run: the debounced automatic sync (``integrations.autosync_due_at``),
   transient failures whose ``next_attempt_at`` has come, and files that failed on a full drive
   once the quota shows room;
4. keep the connection alive: refresh tokens unused for ``TOKEN_KEEPALIVE_DAYS`` (Microsoft
   drops refresh tokens left unused for 90 days);
   then ``subscriptions.maintain``: renew the change-notification subscription at its
   ``renew_at``, recreate it when Graph answers 404, create it when missing (webhooks only);
5. :func:`check_remote_changes`: the delta check of the sync folder when it is due
   (``services.changes``: edits, renames, moves and deletions made in OneDrive);
6. failure notices (``services.notices``): open, notify once, close episodes.

The database is the source of truth; queues only carry wake-ups, so a lost message or a Redis
restart loses nothing: the next tick finds the work again. Where ticks come from:

- production: Celery beat sends ``drivesync.tick`` every ``SCHEDULER_INTERVAL_SECONDS``; a Redis
  lock per tick (``tasks.run_tick``) makes a second beat harmless;
- embedded default: :func:`start_in_process`, a daemon thread started by ``app.py`` only.

Row-level security: the scheduler has no signed-in user. On PostgreSQL the one cross-user query
runs inside ``drivesync_due_users()``, a ``SECURITY DEFINER`` function (migration e4f2a1c9d7b3)
that returns user ids only; everything else runs inside ``user_scope(user_id)`` as the app role.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, current_app
from sqlalchemy import bindparam, func, text, update

from .. import tasks
from ..extensions import db
from ..graph.errors import AuthError, GraphError
from ..models import (
    ExportJob,
    File,
    ImportJob,
    Integration,
    OAuthToken,
    SyncRun,
    UTCDateTime,
    utcnow,
)
from ..scope import user_scope
from . import autosync, changes, export, failures, imports, notices, runs, subscriptions, sync
from .errors import Conflict, NotFound, ServiceError
from .integrations import TokenProvider
from .transfer import changed, recover_stale_claims

logger = logging.getLogger(__name__)

MAX_REQUEUES = 3
INTERRUPTED_AUTO = (
    "The sync was interrupted several times; the files left are tried again automatically."
)
INTERRUPTED_MANUAL = (
    "The sync was interrupted several times; press Sync All to send the files left."
)
KEEPALIVE_RETRY = timedelta(hours=1)  # after a failed keep-alive refresh, wait this long

# Users with due work. Frozen copy in migration e4f2a1c9d7b3 (drivesync_due_users): change both,
# in a new migration, together. Every branch is served by an index (see the migration).
DUE_USERS_SQL = """
SELECT i.user_id FROM integrations i
 WHERE i.autosync_due_at <= :now
   AND i.status = 'active' AND i.autosync AND i.paused_at IS NULL
UNION
SELECT f.owner_id FROM files f JOIN integrations i ON i.user_id = f.owner_id
 WHERE f.next_attempt_at <= :now AND f.onedrive_sync_status = 'error'
   AND i.status = 'active' AND i.paused_at IS NULL
UNION
SELECT f.owner_id FROM files f
 WHERE f.onedrive_sync_status = 'syncing'
   AND (f.heartbeat_at IS NULL OR f.heartbeat_at < :stale)
UNION
SELECT r.user_id FROM sync_runs r
 WHERE (r.status = 'queued' AND COALESCE(r.enqueued_at, r.created_at) < :requeue)
    OR (r.status = 'running' AND COALESCE(r.heartbeat_at, r.started_at, r.created_at) < :stale)
UNION
SELECT i.user_id FROM integrations i JOIN oauth_tokens t ON t.integration_id = i.id
 WHERE t.updated_at < :keepalive AND i.status = 'active'
   AND (i.keepalive_at IS NULL OR i.keepalive_at < :keepalive_retry)
UNION
SELECT i.user_id FROM integrations i
 WHERE (i.status = 'needs_reauth' AND i.notice_sent_at IS NULL)
    OR (i.notice_since IS NOT NULL AND i.status = 'active' AND NOT EXISTS (
          SELECT 1 FROM files f
           WHERE f.owner_id = i.user_id AND f.onedrive_sync_status = 'error'
             AND f.failing_since < :notice))
UNION
SELECT f.owner_id FROM files f JOIN integrations i ON i.user_id = f.owner_id
 WHERE f.failing_since < :notice AND f.onedrive_sync_status = 'error'
   AND i.notice_sent_at IS NULL
UNION
SELECT i.user_id FROM integrations i
 WHERE i.delta_due_at <= :now
   AND i.status = 'active' AND i.paused_at IS NULL
UNION
SELECT s.user_id FROM graph_subscriptions s WHERE s.renew_at <= :now
UNION
SELECT j.user_id FROM import_jobs j
 WHERE (j.status = 'queued' AND COALESCE(j.enqueued_at, j.created_at) < :requeue)
    OR (j.status = 'running' AND COALESCE(j.heartbeat_at, j.started_at, j.created_at) < :stale)
UNION
SELECT e.user_id FROM export_jobs e
 WHERE (e.status = 'queued' AND COALESCE(e.enqueued_at, e.created_at) < :requeue)
    OR (e.status = 'running' AND COALESCE(e.heartbeat_at, e.started_at, e.created_at) < :stale)
"""
_PARAMS = ("now", "stale", "requeue", "keepalive", "keepalive_retry", "notice")


def cutoffs(now: datetime) -> dict[str, datetime]:
    """Return the moments the due-work query compares against, from the configuration."""
    cfg = current_app.config
    return {
        "now": now,
        "stale": now - timedelta(seconds=cfg["SYNC_STALE_SECONDS"]),
        "requeue": now - timedelta(seconds=cfg["RUN_REQUEUE_SECONDS"]),
        "keepalive": now - timedelta(days=cfg["TOKEN_KEEPALIVE_DAYS"]),
        "keepalive_retry": now - KEEPALIVE_RETRY,
        "notice": now - timedelta(hours=cfg["FAILURE_NOTICE_HOURS"]),
    }


def due_users(now: datetime | None = None) -> list[int]:
    """Return the ids of users with due work, in one query (across users: no scope needed)."""
    params = cutoffs(now or utcnow())
    if db.session.get_bind().dialect.name == "postgresql":
        # RLS hides every row outside a user scope; the SECURITY DEFINER function sees them.
        stmt = text(
            "SELECT drivesync_due_users(:now, :stale, :requeue, :keepalive, "
            ":keepalive_retry, :notice) AS user_id ORDER BY 1"
        )
    else:
        stmt = text(f"SELECT user_id FROM ({DUE_USERS_SQL}) AS due ORDER BY 1")  # noqa: S608 - constant
    stmt = stmt.bindparams(*(bindparam(name, type_=UTCDateTime()) for name in _PARAMS))
    return [int(uid) for uid in db.session.execute(stmt, params).scalars()]


def tick(now: datetime | None = None) -> list[int]:
    """Reconcile every user with due work; return their ids. Errors of one user stay theirs."""
    now = now or utcnow()
    db.session.commit()  # each user's transactions must begin inside their scope
    users = due_users(now)
    db.session.commit()
    for user_id in users:
        with user_scope(user_id):
            try:
                reconcile_user(user_id, now)
            except Exception:
                logger.exception("scheduler: reconciling user %s failed", user_id)
                db.session.rollback()
            finally:
                db.session.commit()
    if users:
        logger.info("scheduler tick: %d user(s) with due work", len(users))
    return users


def reconcile_user(user_id: int, now: datetime | None = None) -> None:
    """Do one user's due work (inside their ``user_scope``); see the module docstring."""
    now = now or utcnow()
    recover_stale_claims(user_id)
    _recover_runs(user_id, now)
    _recover_jobs(user_id, now, ImportJob, tasks.enqueue_import, imports.INTERRUPTED)
    _recover_jobs(user_id, now, ExportJob, tasks.enqueue_export, export.INTERRUPTED,
                  export.discard_partial)  # fmt: skip
    integration = db.session.execute(
        db.select(Integration).where(Integration.user_id == user_id)
    ).scalar_one_or_none()
    if integration is not None and integration.active:
        _keep_alive(user_id, integration, now)
        subscriptions.maintain(user_id, now)  # renew ahead of expiry, recreate, or create
        if integration.paused_at is None:
            start_due_work(user_id, now)
            check_remote_changes(user_id, now)
    notices.evaluate(user_id, now)
    db.session.commit()


def wake_user(user_id: int) -> None:
    """Handle a wake-up for one user (the debounced auto-sync): reconcile them now."""
    with user_scope(user_id):
        try:
            reconcile_user(user_id)
        finally:
            db.session.rollback()


def check_remote_changes(user_id: int, now: datetime | None = None) -> None:
    """Check OneDrive for changes made there when the delta check is due (services/changes)."""
    changes.check_if_due(user_id, now)


# -- runs ------------------------------------------------------------------------------------------


def _recover_runs(user_id: int, now: datetime) -> None:
    """Queue again the user's runs whose message or worker is gone; close hopeless ones."""
    cut = cutoffs(now)
    runs = list(
        db.session.execute(
            db.select(SyncRun.id, SyncRun.status, SyncRun.requeues).where(
                SyncRun.user_id == user_id,
                (
                    (SyncRun.status == "queued")
                    & (func.coalesce(SyncRun.enqueued_at, SyncRun.created_at) < cut["requeue"])
                )
                | (
                    (SyncRun.status == "running")
                    & (
                        func.coalesce(SyncRun.heartbeat_at, SyncRun.started_at, SyncRun.created_at)
                        < cut["stale"]
                    )
                ),
            )
        )
    )
    for run_id, status, requeues in runs:
        stmt = update(SyncRun).where(
            SyncRun.id == run_id, SyncRun.user_id == user_id, SyncRun.status == status
        )
        if requeues >= MAX_REQUEUES:
            # The files it left behind go to the next automatic sync, if automatic sync can
            # take them (on, not paused, connected); otherwise the user must press Sync All.
            automatic = autosync.mark_due(user_id, now)
            moved = changed(
                stmt.values(
                    status="failed",
                    finished_at=now,
                    error=INTERRUPTED_AUTO if automatic else INTERRUPTED_MANUAL,
                )
            )
            if not moved:
                db.session.rollback()  # someone else finished it: nothing is left behind
                continue
            db.session.commit()
            logger.warning("scheduler: run %s of user %s given up after %d requeues",
                           run_id, user_id, requeues)  # fmt: skip
            continue
        moved = changed(
            stmt.values(status="queued", enqueued_at=now, requeues=SyncRun.requeues + 1)
        )
        db.session.commit()
        if moved:
            logger.warning("scheduler: run %s of user %s was %s with nobody on it; queued again",
                           run_id, user_id, status)  # fmt: skip
            try:
                tasks.enqueue_run(run_id, user_id)
            except Exception:  # the row says queued: the next tick tries again
                logger.warning("scheduler: could not queue run %s again", run_id)


def _recover_jobs(
    user_id: int,
    now: datetime,
    model: type[ImportJob] | type[ExportJob],
    enqueue: Callable[[int, int], object],
    interrupted: str,
    give_up: Callable[[int, int], None] | None = None,
) -> None:
    """Queue again the user's imports or exports whose message or worker is gone.

    The same rule as runs: queued and not enqueued for ``RUN_REQUEUE_SECONDS``, or running
    with a heartbeat older than ``SYNC_STALE_SECONDS`` (both jobs are safe to run twice, and
    one that lost its claim keeps nothing); closed with ``interrupted`` after
    :data:`MAX_REQUEUES`, ``give_up`` then removing what a dead worker left.
    """
    cut = cutoffs(now)
    kind = model.__tablename__
    jobs = list(
        db.session.execute(
            db.select(model.id, model.status, model.requeues).where(
                model.user_id == user_id,
                (
                    (model.status == "queued")
                    & (func.coalesce(model.enqueued_at, model.created_at) < cut["requeue"])
                )
                | (
                    (model.status == "running")
                    & (
                        func.coalesce(model.heartbeat_at, model.started_at, model.created_at)
                        < cut["stale"]
                    )
                ),
            )
        )
    )
    for job_id, status, requeues in jobs:
        stmt = (
            update(model)
            .where(model.id == job_id, model.user_id == user_id, model.status == status)
            .execution_options(synchronize_session=False)
        )
        if requeues >= MAX_REQUEUES:
            if changed(stmt.values(status="failed", finished_at=now, error=interrupted)):
                db.session.commit()
                if give_up is not None:
                    give_up(user_id, job_id)
            db.session.commit()
            logger.warning("scheduler: %s %s of user %s given up after %d requeues",
                           kind, job_id, user_id, requeues)  # fmt: skip
            continue
        moved = changed(stmt.values(status="queued", enqueued_at=now, requeues=model.requeues + 1))
        db.session.commit()
        if moved:
            logger.warning("scheduler: %s %s of user %s was %s with nobody on it; queued again",
                           kind, job_id, user_id, status)  # fmt: skip
            try:
                enqueue(job_id, user_id)
            except Exception:  # the row says queued: the next tick tries again
                logger.warning("scheduler: could not queue %s %s again", kind, job_id)


# -- due work --------------------------------------------------------------------------------------


def _due_failures(user_id: int, now: datetime) -> list[Any]:
    return list(
        db.session.execute(
            db.select(File.id, File.size, File.failure_kind, File.failure_code, File.sync_attempts)
            .where(
                File.owner_id == user_id,
                File.onedrive_sync_status == "error",
                File.next_attempt_at <= now,
            )
            .order_by(File.next_attempt_at, File.id)
        )
    )


def start_due_work(user_id: int, now: datetime | None = None) -> int | None:
    """Start one run over the user's due work; return its id (None when nothing started)."""
    now = now or utcnow()
    limit = int(current_app.config["SYNC_BATCH_LIMIT"])
    full = [r for r in _due_failures(user_id, now) if r.failure_code in failures.QUOTA_CODES]
    fits = _with_room(user_id, full, now) if full else []  # a Graph call: before the lock
    # Serialise this user's reconciles (two wake-ups at once, two ticks): a no-op UPDATE locks
    # the integration row on PostgreSQL, and the database on SQLite, until request_sync has
    # committed its run; whoever comes second then sees that run and leaves.
    changed(
        update(Integration)
        .where(Integration.user_id == user_id)
        .values(autosync=Integration.autosync)
    )
    integration = db.session.execute(
        db.select(Integration).where(Integration.user_id == user_id)
    ).scalar_one()
    due_at = integration.autosync_due_at
    autosync_due = integration.autosync and due_at is not None and due_at <= now
    ids = [r.id for r in _due_failures(user_id, now) if r.failure_code not in failures.QUOTA_CODES]
    ids += fits
    if autosync_due:
        ids += [i for i in autosync.waiting_files(user_id, limit) if i not in ids]
    ids = ids[:limit]
    if not ids:
        if autosync_due:
            autosync.clear_due(user_id, now)
        db.session.commit()
        return None
    try:
        run = sync.request_sync(user_id, ids)
    except Conflict:
        db.session.rollback()
        return None  # a run is active: it, or the next tick after it, takes the rest
    except (NotFound, ServiceError) as exc:
        db.session.rollback()
        logger.info("scheduler: due work of user %s not started: %s", user_id, exc.message)
        return None
    if autosync_due and len(ids) < limit:
        autosync.clear_due(user_id, now)
        db.session.commit()
    logger.info("scheduler: user %s: run %s over %d due file(s)", user_id, run.id, run.total)
    return run.id


def _with_room(user_id: int, rows: list[Any], now: datetime) -> list[int]:
    """Return the files that now fit on the user's drive; put the others off (quota re-read)."""
    room = _room_on_drive(user_id)
    fits: list[int] = []
    for row in sorted(rows, key=lambda r: r.size):
        if room is not None and row.size <= room:
            fits.append(row.id)
            room -= row.size
            continue
        # Still full (or unknown): check again later, on the same schedule as any failure.
        wait = failures.backoff_delay(max(1, row.sync_attempts), base=failures.retry_base())
        db.session.execute(
            update(File)
            .where(
                File.id == row.id, File.owner_id == user_id, File.onedrive_sync_status == "error"
            )
            .values(next_attempt_at=now + timedelta(seconds=wait))
        )
    db.session.commit()
    return fits


def _room_on_drive(user_id: int) -> int | None:
    """Read the drive's quota now (one Graph call), record it, and return the free bytes."""
    drive = None
    try:
        drive = runs.drive_factory()(user_id)
        quota = drive.quota()
    except (GraphError, ServiceError, OSError) as exc:
        logger.info("scheduler: quota of user %s unknown (%s)", user_id, type(exc).__name__)
        db.session.rollback()
        return None
    finally:
        if drive is not None:
            drive.close()
    used, total = quota.get("used"), quota.get("total")
    db.session.execute(
        update(Integration)
        .where(Integration.user_id == user_id)
        .values(quota_used=used, quota_total=total)
    )
    db.session.commit()
    if quota.get("remaining") is not None:
        return int(quota["remaining"])
    return None if total is None else int(total) - int(used or 0)


# -- keep-alive ------------------------------------------------------------------------------------


def _keep_alive(user_id: int, integration: Integration, now: datetime) -> None:
    """Refresh the tokens of a connection unused for ``TOKEN_KEEPALIVE_DAYS`` (best effort)."""
    cut = cutoffs(now)
    updated = db.session.execute(
        db.select(OAuthToken.updated_at).where(OAuthToken.integration_id == integration.id)
    ).scalar_one_or_none()
    if updated is None or updated >= cut["keepalive"]:
        return
    if integration.keepalive_at is not None and integration.keepalive_at >= cut["keepalive_retry"]:
        return
    db.session.execute(
        update(Integration)
        .where(Integration.id == integration.id, Integration.user_id == user_id)
        .values(keepalive_at=now)
    )
    db.session.commit()
    try:
        TokenProvider(user_id, integration.id)(force_refresh=True)
    except AuthError:
        logger.info("scheduler: keep-alive of user %s: Microsoft wants a reconnect", user_id)
    except (GraphError, ServiceError, OSError) as exc:
        logger.info("scheduler: keep-alive of user %s failed (%s); retried later", user_id,
                    type(exc).__name__)  # fmt: skip
        db.session.rollback()
    else:
        logger.info("scheduler: kept the OneDrive connection of user %s alive", user_id)


# -- the embedded scheduler thread -----------------------------------------------------------------


class InProcessScheduler:
    """A daemon thread ticking every ``interval`` seconds, woken early by :func:`notify`."""

    def __init__(self, app: Flask, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._soonest: float | None = None
        self.ticks = 0
        self.thread = threading.Thread(target=self._loop, name="drivesync-scheduler", daemon=True)

    def start(self) -> InProcessScheduler:
        """Start the thread; the first tick runs at once (it recovers what a restart left)."""
        self.thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        """Stop the thread and wait for a running tick to end."""
        self._stop.set()
        self._wake.set()
        self.thread.join(timeout)

    def notify(self, delay: float) -> None:
        """Tick ``delay`` seconds from now (or sooner if a tick is due anyway)."""
        at = time.monotonic() + max(0.0, delay)
        with self._lock:
            if self._soonest is None or at < self._soonest:
                self._soonest = at
        self._wake.set()

    def _loop(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                wake_at = min(next_tick, self._soonest) if self._soonest else next_tick
            if self._wake.wait(max(0.0, wake_at - time.monotonic())):
                self._wake.clear()
                continue  # a notify or stop: work out the next moment again
            now = time.monotonic()
            with self._lock:
                if self._soonest is not None and self._soonest <= now:
                    self._soonest = None
            self._tick()
            next_tick = max(next_tick, now) if now < next_tick else now + self.interval

    def _tick(self) -> None:
        with self.app.app_context():
            try:
                tick()
            except Exception:
                logger.exception("scheduler tick failed")
            finally:
                db.session.remove()
            self.ticks += 1


_in_process: InProcessScheduler | None = None


def start_in_process(app: Flask, interval: float | None = None) -> InProcessScheduler:
    """Start the embedded scheduler thread for ``app`` (``app.py`` does; tests when they ask)."""
    global _in_process
    if _in_process is not None:
        _in_process.stop()
    every = interval or float(app.config["SCHEDULER_INTERVAL_SECONDS"])
    _in_process = InProcessScheduler(app, every).start()
    return _in_process


def stop_in_process() -> None:
    """Stop the embedded scheduler thread, if one runs."""
    global _in_process
    if _in_process is not None:
        _in_process.stop()
        _in_process = None


def notify(delay: float) -> bool:
    """Wake the embedded scheduler ``delay`` seconds from now; return whether one runs here."""
    if _in_process is None:
        return False
    _in_process.notify(delay)
    return True
