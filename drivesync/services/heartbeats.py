"""Keep claims alive: one beater thread per process writes ``heartbeat_at`` for every live claim.

A claim whose heartbeat is older than ``SYNC_STALE_SECONDS`` is taken back as abandoned
(``transfer.recover_stale_claims``), so the heartbeat must not depend on how long one fragment
takes: a slow 60 MiB fragment is not a dead worker. Each claim beats every third of the stale
timeout, from this thread, whatever the upload is doing; a killed process stops beating, which
is exactly what lets its claims be recovered. Files that finish within one interval (most) cost
no write at all: registering a claim is a dict insert.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from flask import Flask
from sqlalchemy import and_, or_, update

from ..extensions import db
from ..models import File, utcnow
from ..scope import user_scope

logger = logging.getLogger(__name__)


@dataclass
class _Beat:
    app: Flask
    user_id: int
    file_id: int
    claimed_at: datetime
    every: float
    due: float


class Beater:
    """The process-wide heartbeat thread and the claims it keeps alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._beats: dict[tuple[int, datetime], _Beat] = {}
        self._thread: threading.Thread | None = None
        self._planned = 0.0  # when the thread will next look (monotonic seconds)

    def add(
        self, app: Flask, user_id: int, file_id: int, claimed_at: datetime, every: float
    ) -> None:
        """Start beating for the claim ``(file_id, claimed_at)`` every ``every`` seconds."""
        beat = _Beat(app, user_id, file_id, claimed_at, every, time.monotonic() + every)
        with self._lock:
            self._beats[file_id, claimed_at] = beat
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="drivesync-heartbeat", daemon=True
                )
                self._thread.start()
            early = beat.due < self._planned  # usually not: no wake-up (and no switch) per file
        if early:
            self._wake.set()

    def discard(self, file_id: int, claimed_at: datetime) -> None:
        """Stop beating for the claim (it finished, or was released)."""
        with self._lock:
            self._beats.pop((file_id, claimed_at), None)

    def _run(self) -> None:
        while True:
            self._wake.clear()
            with self._lock:
                now = time.monotonic()
                due = [b for b in self._beats.values() if b.due <= now]
                for b in due:
                    b.due = now + b.every
                wait = max(min((b.due for b in self._beats.values()), default=now + 60) - now, 0.01)
                self._planned = now + wait
            if due:
                self._write(due)
            self._wake.wait(wait)

    def _write(self, due: list[_Beat]) -> None:
        groups: dict[tuple[Flask, int], list[_Beat]] = defaultdict(list)
        for b in due:
            groups[b.app, b.user_id].append(b)
        for (app, user_id), beats in groups.items():
            try:
                with app.app_context(), user_scope(user_id):
                    try:
                        ours = or_(
                            *(and_(File.id == b.file_id, File.claimed_at == b.claimed_at)
                              for b in beats)
                        )  # fmt: skip
                        db.session.execute(
                            update(File)
                            .where(File.owner_id == user_id, File.onedrive_sync_status == "syncing")
                            .where(ours)
                            .values(heartbeat_at=utcnow())
                            .execution_options(synchronize_session=False)
                        )
                        db.session.commit()
                    finally:
                        db.session.remove()
            except Exception:
                logger.exception("heartbeat for %d claims of user %s failed", len(beats), user_id)


beater = Beater()
