"""Executing a sync run: what workers call (``tasks.run_job`` → ``execute_run``).

A run takes the files tagged with its id and pushes them on ``SYNC_CONCURRENCY`` threads, under
a process-wide cap of ``SYNC_GLOBAL_CONCURRENCY`` uploads. Each thread builds its own Drive (own
HTTP sessions, own token provider bound to its own database session). When OneDrive needs the
user to reconnect, the first thread to notice stops the run and flags the integration; the other
files stay ``not_synced``. Safe to run twice: every file is taken by a conditional claim.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib import import_module
from queue import Empty, SimpleQueue
from typing import TypeVar, cast

from flask import Flask, current_app
from sqlalchemy import func, update

from ..extensions import db
from ..graph.drive import Drive, DriveFactory, GraphDrive
from ..graph.errors import AuthError, GraphError
from ..models import File, Integration, SyncRun, utcnow
from ..scope import user_scope
from . import liveness
from .errors import ServiceError
from .integrations import NotConnected, ReauthRequired, graph_client_for, mark_needs_reauth
from .liveness import RunHeartbeat, requeue_run
from .transfer import (
    Target,
    changed,
    load_integration,
    push_file,
    reauth_message,
    recover_stale_claims,
    short,
)

logger = logging.getLogger(__name__)

ACTIVE_RUN_STATUSES = ("queued", "running")
T = TypeVar("T")


def graph_drive_for(user_id: int) -> Drive:
    """Return a ``GraphDrive`` for the user's OneDrive integration (refreshing tokens as needed)."""
    client, integration = graph_client_for(user_id)
    return GraphDrive(client, integration.drive_type)


def drive_factory() -> DriveFactory:
    """Return the configured factory: ``SYNC_DRIVE_FACTORY`` (callable or "module:attr")."""
    configured = current_app.config["SYNC_DRIVE_FACTORY"]
    if not configured:
        return graph_drive_for
    if callable(configured):
        return cast(DriveFactory, configured)
    module, _, attr = str(configured).partition(":")
    return cast(DriveFactory, getattr(import_module(module), attr or "drive_factory"))


@dataclass
class _Stop:
    """The run's stop flag, shared by its threads, and why it was raised (a reconnect)."""

    event: threading.Event = field(default_factory=threading.Event)
    message: str | None = None


_global_lock = threading.Lock()
_global_slots: tuple[int, threading.BoundedSemaphore] | None = None


def _global_semaphore(size: int) -> threading.BoundedSemaphore:
    """Return the process-wide semaphore capping uploads across all runs."""
    global _global_slots
    with _global_lock:
        if _global_slots is None or _global_slots[0] != size:
            _global_slots = (size, threading.BoundedSemaphore(size))
        return _global_slots[1]


def execute_run(
    run_id: int,
    user_id: int,
    *,
    resolve: str | None = None,
    factory: DriveFactory | None = None,
) -> SyncRun | None:
    """Run a queued sync run to its end; safe to run twice (claims are conditional)."""
    with user_scope(user_id):
        try:
            return _execute_run(run_id, user_id, resolve, factory or drive_factory())
        finally:
            db.session.rollback()


def _execute_run(
    run_id: int, user_id: int, resolve: str | None, factory: DriveFactory
) -> SyncRun | None:
    recover_stale_claims(user_id)
    runs = update(SyncRun).where(SyncRun.id == run_id, SyncRun.user_id == user_id)
    started = changed(
        runs.where(SyncRun.status.in_(ACTIVE_RUN_STATUSES)).values(
            status="running", started_at=func.coalesce(SyncRun.started_at, utcnow())
        )
    )
    db.session.commit()
    if not started:
        logger.info("sync run %s is finished or unknown; nothing to do", run_id)
        return _run_row(run_id, user_id)
    try:
        folder_id = load_integration(user_id).folder_id
    except (NotConnected, ReauthRequired) as exc:
        return _finish_run(run_id, user_id, "stopped", exc.message)
    assert folder_id is not None  # noqa: S101 - load_integration checks it
    # The decision is on the row too: a run the scheduler queued again arrives without it.
    resolve = resolve or db.session.scalar(
        db.select(SyncRun.resolve).where(SyncRun.id == run_id, SyncRun.user_id == user_id)
    )
    status = "conflict" if resolve else "not_synced"
    ids = list(
        db.session.execute(
            db.select(File.id)
            .where(
                File.owner_id == user_id,
                File.sync_run_id == run_id,
                File.onedrive_sync_status == status,
            )
            .order_by(File.id)
        ).scalars()
    )
    db.session.commit()
    stop = _Stop()
    if ids:
        target = Target.from_config(user_id, folder_id, run_id, resolve)
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]  # werkzeug's LocalProxy is untyped
        with RunHeartbeat(app, run_id, user_id):
            _run_files(app, target, ids, factory, stop)
    if liveness.stopping():  # warm shutdown: the uploads under way ended; the rest waits
        return requeue_run(run_id, user_id)
    if stop.message:
        return _finish_run(run_id, user_id, "stopped", stop.message)
    if _held_elsewhere(run_id, user_id):
        # A file of this run is still claimed by another worker, perhaps a dead one whose claim
        # is not stale yet (the scheduler found the run stale first). Finishing now would leave
        # that file behind once its claim is recovered. Stamp the run and leave it running: a
        # live worker finishes it; if that worker is dead, the scheduler queues the run again
        # one stale period later, when the claim is stale too, and that execution takes the file.
        app = current_app._get_current_object()  # type: ignore[attr-defined]  # LocalProxy is untyped
        RunHeartbeat(app, run_id, user_id).beat()
        logger.info("sync run %s: a file is still claimed elsewhere; left running", run_id)
        return _run_row(run_id, user_id)
    _refresh_quota(user_id, factory)
    return _finish_run(run_id, user_id, "done", None)


def _held_elsewhere(run_id: int, user_id: int) -> bool:
    """Return whether a file of the run is still claimed (``syncing``) after its threads ended."""
    held = db.session.execute(
        db.select(File.id)
        .where(
            File.owner_id == user_id,
            File.sync_run_id == run_id,
            File.onedrive_sync_status == "syncing",
        )
        .limit(1)
    ).first()
    db.session.commit()
    return held is not None


def _run_row(run_id: int, user_id: int) -> SyncRun | None:
    return db.session.execute(
        db.select(SyncRun).where(SyncRun.id == run_id, SyncRun.user_id == user_id)
    ).scalar_one_or_none()


def _refresh_quota(user_id: int, factory: DriveFactory) -> None:
    """Record the drive's quota after a run, so the dashboard's storage bar is current.

    Best effort: a failure here must not turn a successful run into a failed one.
    """
    drive = None
    try:
        drive = factory(user_id)
        quota = drive.quota()
    except (GraphError, ServiceError, OSError) as exc:
        logger.info("quota refresh after a run of user %s skipped: %s", user_id,
                    type(exc).__name__)  # fmt: skip
        db.session.rollback()
        return
    finally:
        if drive is not None:
            drive.close()
    if "used" in quota or "total" in quota:
        db.session.execute(
            update(Integration)
            .where(Integration.user_id == user_id, Integration.provider == "onedrive")
            .values(quota_used=quota.get("used"), quota_total=quota.get("total"))
        )
        db.session.commit()


def _finish_run(run_id: int, user_id: int, status: str, error: str | None) -> SyncRun | None:
    now = utcnow()
    db.session.execute(
        update(SyncRun)
        .where(SyncRun.id == run_id, SyncRun.user_id == user_id)
        .values(status=status, error=short(error) if error else None, finished_at=now)
    )
    db.session.execute(
        update(Integration)
        .where(Integration.user_id == user_id, Integration.provider == "onedrive")
        .values(last_sync_at=now)
    )
    db.session.commit()
    run = _run_row(run_id, user_id)
    if run is not None:
        logger.info("sync run %s %s: %d ok, %d failed of %d", run_id, status, run.succeeded,
                    run.failed, run.total)  # fmt: skip
    return run


def _run_files(
    app: Flask, target: Target, ids: list[int], factory: DriveFactory, stop: _Stop
) -> None:
    """Push ``ids`` to ``target`` on the configured number of threads, each with its own drive."""
    queue: SimpleQueue[int] = SimpleQueue()
    for file_id in ids:
        queue.put(file_id)
    workers = max(1, min(app.config["SYNC_CONCURRENCY"], len(ids)))
    slots = _global_semaphore(app.config["SYNC_GLOBAL_CONCURRENCY"])
    user_id = target.user_id

    def work() -> None:
        with app.app_context(), user_scope(user_id):
            drive: Drive | None = None
            try:
                while not stop.event.is_set() and not liveness.stopping():
                    try:
                        file_id = queue.get_nowait()
                    except Empty:
                        return
                    if drive is None:
                        drive = _make_drive(factory, user_id, stop)
                        if drive is None:
                            return
                    with slots:
                        if stop.event.is_set():
                            return
                        _guarded(partial(push_file, file_id, drive, target), user_id, stop)
            finally:
                if drive is not None:
                    drive.close()
                db.session.remove()

    name = f"sync-run-{target.run_id}"
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        futures = [pool.submit(work) for _ in range(workers)]
    for future in futures:
        if (exc := future.exception()) is not None:
            logger.error("sync worker of run %s crashed: %s", target.run_id, type(exc).__name__)


def _make_drive(factory: DriveFactory, user_id: int, stop: _Stop) -> Drive | None:
    return _guarded(partial(factory, user_id), user_id, stop)


def _guarded(step: Callable[[], T], user_id: int, stop: _Stop) -> T | None:
    """Return ``step()``, or stop the run and return None when OneDrive needs reconnecting."""
    try:
        return step()
    except (AuthError, ReauthRequired, NotConnected) as exc:
        _stop_for_reauth(user_id, stop, reauth_message(exc))
        return None


def _stop_for_reauth(user_id: int, stop: _Stop, message: str) -> None:
    first = not stop.event.is_set()
    stop.message = stop.message or message
    stop.event.set()
    if first:
        try:
            mark_needs_reauth(user_id, message)
        except Exception:
            logger.exception("could not mark the integration of user %s for reauth", user_id)
            db.session.rollback()
