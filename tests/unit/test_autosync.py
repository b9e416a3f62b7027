"""Sync on upload: the debounce, the setting, Pause / Resume (services/autosync.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from drivesync import tasks
from drivesync.extensions import db
from drivesync.models import File, Integration, SyncRun, utcnow
from drivesync.scope import user_scope
from drivesync.services import autosync, scheduler
from tests.fakes import FakeDrive


@pytest.fixture
def app_overrides(fake: FakeDrive) -> dict[str, Any]:
    """Point the engine at the fake drive; a 5-second debounce."""
    return {"SYNC_DRIVE_FACTORY": lambda user_id: fake, "AUTOSYNC_DEBOUNCE_SECONDS": 5}


@pytest.fixture
def wakeups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float]]:
    """Record the wake-ups sent to the task backend (the eager backend sends none)."""
    sent: list[tuple[int, float]] = []
    monkeypatch.setattr(tasks, "wake_user", lambda user_id, delay: sent.append((user_id, delay)))
    return sent


def integration(user_id: int) -> Integration:
    """Return a fresh copy of the user's integration row."""
    db.session.expire_all()
    return db.session.execute(
        db.select(Integration).where(Integration.user_id == user_id)
    ).scalar_one()


def statuses(user_id: int) -> list[str]:
    """Return the sync status of each of the user's files, oldest first."""
    db.session.expire_all()
    return list(
        db.session.execute(
            db.select(File.onedrive_sync_status).where(File.owner_id == user_id).order_by(File.id)
        ).scalars()
    )


def runs(user_id: int) -> list[SyncRun]:
    """Return the user's runs."""
    return list(db.session.execute(db.select(SyncRun).where(SyncRun.user_id == user_id)).scalars())


def test_upload_marks_the_sync_due_after_the_debounce(
    app: Flask, user: int, make_file: Callable[..., int], wakeups: list[Any]
) -> None:
    """An upload stores a due time five seconds ahead and sends one wake-up after its commit."""
    before = utcnow()
    make_file(user, "a.txt", b"a")
    with app.app_context(), user_scope(user):
        due = integration(user).autosync_due_at
    assert due is not None
    assert before + timedelta(seconds=5) <= due <= utcnow() + timedelta(seconds=5)
    assert wakeups == [(user, 5.0)]


def test_uploads_coalesce_into_one_run(
    app: Flask, user: int, make_file: Callable[..., int], wakeups: list[Any], fake: FakeDrive
) -> None:
    """Three uploads in a row make one run over all three, once the debounce has passed."""
    for name in ("a.txt", "b.txt", "c.txt"):
        make_file(user, name, name.encode())
    with app.app_context(), user_scope(user):
        due = integration(user).autosync_due_at
        assert due is not None
        assert scheduler.tick(due - timedelta(seconds=1)) == []  # not yet
        assert statuses(user) == ["not_synced"] * 3
        assert scheduler.tick(due) == [user]
        assert statuses(user) == ["synced"] * 3
        assert [r.total for r in runs(user)] == [3]
        assert integration(user).autosync_due_at is None
        assert scheduler.tick(due + timedelta(minutes=1)) == []  # nothing due any more
    assert len(fake.uploads()) == 3


def test_debounce_moves_with_each_upload_but_an_overdue_time_stays(
    app: Flask, user: int, ctx: None
) -> None:
    """A later upload pushes a future due time back; a due time already past is not postponed."""
    now = utcnow()
    assert autosync.mark_due(user, now)
    assert autosync.mark_due(user, now + timedelta(seconds=3))
    assert integration(user).autosync_due_at == now + timedelta(seconds=8)
    later = now + timedelta(seconds=60)
    assert not autosync.mark_due(user, later)  # overdue: the tick takes it now
    assert integration(user).autosync_due_at == now + timedelta(seconds=8)


@pytest.mark.parametrize(
    "state",
    [
        {"status": "needs_reauth"},
        {"autosync": False},
        {"paused_at": "now"},
    ],
    ids=["needs_reauth", "autosync_off", "paused"],
)
def test_nothing_is_queued_while_paused_off_or_reconnect_needed(
    app: Flask,
    make_user: Callable[..., int],
    link_onedrive: Callable[..., None],
    make_file: Callable[..., int],
    wakeups: list[Any],
    state: dict[str, Any],
) -> None:
    """No due time and no wake-up while the user paused, switched it off or must reconnect."""
    uid = make_user()
    link_onedrive(uid, **{k: (utcnow() if v == "now" else v) for k, v in state.items()})
    make_file(uid, "a.txt", b"a")
    with app.app_context(), user_scope(uid):
        assert integration(uid).autosync_due_at is None
        scheduler.tick(utcnow() + timedelta(hours=1))
        assert statuses(uid) == ["not_synced"] and runs(uid) == []
    assert wakeups == []


def test_nothing_is_queued_while_disconnected(
    app: Flask, make_user: Callable[..., int], make_file: Callable[..., int], wakeups: list[Any]
) -> None:
    """Without a connection an upload changes nothing but the library."""
    uid = make_user()
    make_file(uid, "a.txt", b"a")
    with app.app_context(), user_scope(uid):
        assert scheduler.tick(utcnow() + timedelta(hours=1)) == []
    assert wakeups == []


def test_a_rolled_back_upload_sends_no_wake_up(
    app: Flask, user: int, ctx: None, wakeups: list[Any]
) -> None:
    """The wake-up follows the commit: a rolled-back transaction leaves nothing behind."""
    autosync.mark_due(user)
    db.session.rollback()
    db.session.commit()
    assert wakeups == []
    assert integration(user).autosync_due_at is None


def test_pause_and_resume(
    app: Flask, user: int, make_file: Callable[..., int], wakeups: list[Any]
) -> None:
    """Paused: uploads wait. Resume: what waited is due after the debounce and then synced."""
    with app.app_context(), user_scope(user):
        autosync.pause(user)
        assert integration(user).paused_at is not None
    make_file(user, "a.txt", b"a")
    with app.app_context(), user_scope(user):
        assert scheduler.tick(utcnow() + timedelta(hours=1)) == []
        autosync.resume(user)
        i = integration(user)
        assert i.paused_at is None and i.autosync_due_at is not None
        scheduler.tick(i.autosync_due_at)
        assert statuses(user) == ["synced"]


def test_switching_automatic_sync_on_takes_what_waited(
    app: Flask, make_user: Callable[..., int], link_onedrive: Callable[..., None],
    make_file: Callable[..., int], wakeups: list[Any],
) -> None:  # fmt: skip
    """Files uploaded while automatic sync was off are synced once it is switched on."""
    uid = make_user()
    link_onedrive(uid, autosync=False)
    make_file(uid, "a.txt", b"a")
    with app.app_context(), user_scope(uid):
        autosync.set_enabled(uid, True)
        due = integration(uid).autosync_due_at
        assert due is not None
        scheduler.tick(due)
        assert statuses(uid) == ["synced"]


def test_uploads_during_a_run_wait_for_the_next_one(
    app: Flask, user: int, make_file: Callable[..., int], wakeups: list[Any]
) -> None:
    """A due time met by an active run stays due; the tick after the run starts the next one."""
    make_file(user, "a.txt", b"a")
    with app.app_context(), user_scope(user):
        db.session.add(SyncRun(user_id=user, status="running", started_at=utcnow()))
        db.session.commit()
        due = integration(user).autosync_due_at
        assert due is not None
        scheduler.tick(due)
        assert statuses(user) == ["not_synced"]
        assert integration(user).autosync_due_at == due
        db.session.execute(update(SyncRun).values(status="done", finished_at=utcnow()))
        db.session.commit()
        scheduler.tick(due + timedelta(seconds=1))
        assert statuses(user) == ["synced"]


def test_settings_page_pause_resume_and_toggle(
    app: Flask, client: Any, login: Callable[[int], None], user: int
) -> None:
    """The settings page offers Pause, then Resume, and the automatic-sync checkbox."""
    from tests.conftest import csrf_token

    login(user)
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "Sync new and changed files automatically" in html and 'id="pause-sync"' in html
    token = csrf_token(client, "/settings/onedrive/")
    r = client.post("/settings/onedrive/automatic/pause", data={"csrf_token": token})
    assert r.status_code == 303
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert 'id="resume-sync"' in html and "nothing is uploaded or retried automatically" in html
    client.post("/settings/onedrive/automatic/resume", data={"csrf_token": token})
    client.post("/settings/onedrive/automatic/", data={"csrf_token": token})  # box unticked
    with app.app_context(), user_scope(user):
        i = integration(user)
        assert i.paused_at is None and i.autosync is False
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "New and changed files wait for Sync All" in html


def test_automatic_sync_leaves_failed_files_to_their_schedule(
    app: Flask, user: int, make_file: Callable[..., int], wakeups: list[Any], fake: FakeDrive
) -> None:
    """An upload's automatic run takes the new file, not a file that failed for good."""
    from drivesync.graph.errors import NameNotAllowedError
    from drivesync.services import sync

    bad = make_file(user, "bad.txt", b"bad")
    with app.app_context(), user_scope(user):
        fake.fail_uploads(NameNotAllowedError("Names cannot contain ':'", "a:b"))
        sync.request_sync(user, [bad])
    make_file(user, "good.txt", b"good")
    with app.app_context(), user_scope(user):
        due = integration(user).autosync_due_at
        assert due is not None
        scheduler.tick(due)
        assert statuses(user) == ["error", "synced"]


@pytest.mark.parametrize(
    ("retry_in", "paused", "polls"),
    [
        (timedelta(seconds=30), False, True),  # a retry coming: the page watches for its result
        (timedelta(hours=2), False, False),  # hours away: the page says when, and stops polling
        (timedelta(seconds=30), True, False),  # paused: nothing is retried, nothing to watch
        (None, False, False),  # failed for good: waits for the user
    ],
)
def test_settings_page_keeps_polling_while_a_retry_is_near(
    app: Flask,
    client: Any,
    login: Callable[[int], None],
    user: int,
    make_file: Callable[..., int],
    retry_in: timedelta | None,
    paused: bool,
    polls: bool,
) -> None:
    """A file waiting for its scheduled retry keeps the list polling, so it turns synced on
    screen once the scheduler retried it; a retry hours away, or none, does not."""
    file_id = make_file(user, "scan.pdf", b"%PDF")
    with app.app_context(), user_scope(user):
        db.session.execute(
            update(File)
            .where(File.id == file_id, File.owner_id == user)
            .values(
                onedrive_sync_status="error",
                onedrive_error="OneDrive is not available right now.",
                failure_kind="transient",
                sync_attempts=1,
                next_attempt_at=utcnow() + retry_in if retry_in else None,
            )
        )
        db.session.execute(
            update(Integration)
            .where(Integration.user_id == user)
            .values(autosync_due_at=None, paused_at=utcnow() if paused else None)
        )
        db.session.commit()
    login(user)
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    pending = html[html.index('id="pending"') : html.index('id="pending-files"')]
    assert ('hx-trigger="load delay:1s"' in pending) is polls
    assert ("Next try in" in html) is (retry_in is not None and not paused)
