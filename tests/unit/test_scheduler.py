"""The scheduler's tick: due users, retries with backoff, recovery of runs and claims, keep-alive,
failure notices (services/scheduler.py, services/notices.py). Runs on SQLite and, in the
PostgreSQL pass, as the app role under row-level security."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
import responses
from flask import Flask
from sqlalchemy import update

from drivesync import tasks
from drivesync.extensions import db
from drivesync.graph.errors import GraphError, InsufficientStorageError, NameNotAllowedError
from drivesync.models import File, Integration, OAuthToken, SyncRun, utcnow
from drivesync.scope import user_scope
from drivesync.services import integrations, notices, scheduler, sync
from tests.fakes import FakeDrive


@pytest.fixture
def app_overrides(fake: FakeDrive) -> dict[str, Any]:
    """Point the engine at the fake drive."""
    return {
        "SYNC_DRIVE_FACTORY": lambda user_id: fake,
        "SYNC_STALE_SECONDS": 90,
        "RUN_REQUEUE_SECONDS": 120,
        "FAILURE_NOTICE_HOURS": 24,
        "MS_CLIENT_ID": "client",
        "MS_CLIENT_SECRET": "secret",
        "MS_AUTHORITY": "https://login.example",
    }


@pytest.fixture
def link_onedrive(link_onedrive: Callable[..., None]) -> Callable[..., None]:
    """The engine's link_onedrive, with automatic sync off: only what a test sets up is due."""
    return partial(link_onedrive, autosync=False)


def row(file_id: int) -> File:
    """Return a fresh copy of a file row."""
    db.session.expire_all()
    f = db.session.get(File, file_id)
    assert f is not None
    return f


def set_file(user_id: int, file_id: int, **values: Any) -> None:
    """Write columns of one of the user's files directly (test set-up)."""
    db.session.execute(
        update(File).where(File.id == file_id, File.owner_id == user_id).values(**values)
    )
    db.session.commit()


def fail_once(fake: FakeDrive, user: int, fid: int, exc: BaseException) -> File:
    """Sync the file through a failing upload; return its row."""
    fake.fail_uploads(exc)
    sync.request_sync(user, [fid])
    return row(fid)


# -- retries ---------------------------------------------------------------------------------------


def test_transient_failure_is_retried_when_due_and_ends_synced(
    app: Flask, user: int, ctx: None, fake: FakeDrive, make_file: Callable[..., int]
) -> None:
    """A 503 leaves the file failed with a next try a minute or two away; the tick then syncs it."""
    fid = make_file(user, "a.txt", b"a")
    f = fail_once(fake, user, fid, GraphError("down", status=503))
    assert (f.onedrive_sync_status, f.failure_kind, f.sync_attempts) == ("error", "transient", 1)
    assert f.next_attempt_at is not None and f.failing_since is not None
    wait = (f.next_attempt_at - utcnow()).total_seconds()
    assert 55 <= wait <= 120
    assert scheduler.tick(f.next_attempt_at - timedelta(seconds=1)) == []
    assert scheduler.tick(f.next_attempt_at) == [user]
    f = row(fid)
    assert f.onedrive_sync_status == "synced"
    assert (f.failure_kind, f.sync_attempts, f.next_attempt_at, f.failing_since) == (
        None, 0, None, None)  # fmt: skip


def test_attempts_count_up_and_retry_after_is_honoured(
    app: Flask, user: int, ctx: None, fake: FakeDrive, make_file: Callable[..., int]
) -> None:
    """Each failed retry counts; a long Retry-After pushes the next try past the backoff."""
    fid = make_file(user, "a.txt", b"a")
    f = fail_once(fake, user, fid, GraphError("busy", status=503))
    first_failure = f.failing_since
    fake.fail_uploads(GraphError("busy", status=429, retry_after=3600))
    scheduler.tick(f.next_attempt_at)
    f = row(fid)
    assert (f.onedrive_sync_status, f.sync_attempts) == ("error", 2)
    assert f.failing_since == first_failure
    assert f.next_attempt_at is not None
    assert (f.next_attempt_at - utcnow()).total_seconds() > 3500


def test_permanent_failure_is_not_retried(
    app: Flask, user: int, ctx: None, fake: FakeDrive, make_file: Callable[..., int]
) -> None:
    """A refused name waits for the user: no next try, the tick leaves it alone."""
    fid = make_file(user, "a.txt", b"a")
    f = fail_once(fake, user, fid, NameNotAllowedError("Names cannot contain ':'", "a:b"))
    assert (f.failure_kind, f.next_attempt_at) == ("permanent", None)
    before = len(fake.calls)
    assert scheduler.tick(utcnow() + timedelta(hours=23)) == []
    assert row(fid).onedrive_sync_status == "error"
    assert len(fake.calls) == before


def test_full_drive_retries_once_the_quota_shows_room(
    app: Flask, user: int, ctx: None, fake: FakeDrive, make_file: Callable[..., int]
) -> None:
    """507: the tick reads the quota first; still full puts it off, room lets it go."""
    fid = make_file(user, "a.txt", b"abc")
    f = fail_once(fake, user, fid, InsufficientStorageError("full", code="quotaLimitReached"))
    assert (f.failure_kind, f.failure_code) == ("user", "quotaLimitReached")
    assert f.next_attempt_at is not None
    fake.quota_total = 0  # still full
    due = f.next_attempt_at
    scheduler.tick(due)
    f = row(fid)
    assert f.onedrive_sync_status == "error" and f.next_attempt_at > due
    fake.quota_total = 5 * 1024**3
    scheduler.tick(f.next_attempt_at)
    assert row(fid).onedrive_sync_status == "synced"


def test_paused_user_is_not_retried(
    app: Flask, user: int, ctx: None, fake: FakeDrive, make_file: Callable[..., int]
) -> None:
    """Pause holds retries too."""
    fid = make_file(user, "a.txt", b"a")
    f = fail_once(fake, user, fid, GraphError("down", status=503))
    db.session.execute(update(Integration).values(paused_at=utcnow()))
    db.session.commit()
    assert scheduler.tick(f.next_attempt_at) == []
    assert row(fid).onedrive_sync_status == "error"


# -- recovery --------------------------------------------------------------------------------------


def test_lost_queued_run_is_queued_again(
    app: Flask, user: int, ctx: None, make_file: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued run whose message never arrived is re-enqueued by the tick and runs to the end."""
    fid = make_file(user, "a.txt", b"a")
    monkeypatch.setattr(tasks, "enqueue_run", lambda *a, **k: None)  # the message is lost
    run = sync.request_sync(user)
    assert run.status == "queued"
    monkeypatch.undo()
    assert scheduler.tick(utcnow() + timedelta(seconds=60)) == []  # too early to call it lost
    assert scheduler.tick(utcnow() + timedelta(seconds=121)) == [user]
    db.session.expire_all()
    run = db.session.get(SyncRun, run.id)
    assert run is not None and (run.status, run.succeeded, run.requeues) == ("done", 1, 1)
    assert row(fid).onedrive_sync_status == "synced"


def test_dead_worker_run_and_claim_are_recovered(
    app: Flask, user: int, ctx: None, make_file: Callable[..., int]
) -> None:
    """A run left running and a file left syncing by a dead worker both end: the file synced."""
    fid = make_file(user, "a.txt", b"a")
    old = utcnow() - timedelta(minutes=10)
    run = SyncRun(user_id=user, status="running", total=1, created_at=old, started_at=old)
    db.session.add(run)
    db.session.flush()
    set_file(user, fid, onedrive_sync_status="syncing", sync_run_id=run.id, claimed_at=old,
             heartbeat_at=old)  # fmt: skip
    assert scheduler.tick() == [user]
    assert row(fid).onedrive_sync_status == "synced"
    db.session.expire_all()
    assert db.session.get(SyncRun, run.id).status == "done"  # type: ignore[union-attr]
    assert scheduler.tick() == []


def test_a_run_that_keeps_dying_is_closed(
    app: Flask, user: int, ctx: None, make_file: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After three re-queues the run is closed as interrupted instead of re-queued forever."""
    make_file(user, "a.txt", b"a")
    monkeypatch.setattr(tasks, "enqueue_run", lambda *a, **k: None)
    run = sync.request_sync(user)
    later = utcnow()
    for _ in range(scheduler.MAX_REQUEUES + 1):
        later += timedelta(seconds=200)
        scheduler.tick(later)
    db.session.expire_all()
    run = db.session.get(SyncRun, run.id)
    assert run is not None and run.status == "failed" and "interrupted" in (run.error or "")
    # Automatic sync is off for this user: the page must not promise an automatic retry.
    assert run.error == scheduler.INTERRUPTED_MANUAL


# -- keep-alive ------------------------------------------------------------------------------------


@responses.activate
def test_connections_unused_for_thirty_days_are_refreshed(app: Flask, user: int, ctx: None) -> None:
    """The tick refreshes a token untouched for more than TOKEN_KEEPALIVE_DAYS, once."""
    responses.post(
        "https://login.example/common/oauth2/v2.0/token",
        json={"access_token": "new-access", "refresh_token": "new-refresh", "expires_in": 3600,
              "token_type": "Bearer", "scope": "Files.ReadWrite"},
    )  # fmt: skip
    integration = db.session.execute(db.select(Integration)).scalar_one()
    integrations.save_token(integration, {"access_token": "old", "refresh_token": "old-r",
                                          "expires_in": 3600})  # fmt: skip
    db.session.commit()
    assert scheduler.tick() == []  # fresh: nothing to do
    db.session.execute(update(OAuthToken).values(updated_at=utcnow() - timedelta(days=31)))
    db.session.commit()
    assert scheduler.tick() == [user]
    assert len(responses.calls) == 1
    token = db.session.execute(db.select(OAuthToken)).scalar_one()
    db.session.refresh(token)
    assert token.updated_at > utcnow() - timedelta(minutes=1)
    assert scheduler.tick() == []


# -- notices ---------------------------------------------------------------------------------------


@pytest.fixture
def mails(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Record the episode e-mails instead of logging them."""
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(notices, "_send_episode_mail", lambda uid, subject, body: sent.append(
        (uid, subject)))  # fmt: skip
    return sent


def test_one_notice_per_episode_and_a_new_one_after_recovery(
    app: Flask, user: int, ctx: None, make_file: Callable[..., int], mails: list[Any]
) -> None:
    """Files failing for a day make one e-mail however many ticks; recovery ends the episode."""
    a, b = make_file(user, "a.txt", b"a"), make_file(user, "b.txt", b"b")
    long_ago = utcnow() - timedelta(hours=25)
    for fid in (a, b):
        set_file(user, fid, onedrive_sync_status="error", failure_kind="permanent",
                 failing_since=long_ago, onedrive_error="Names cannot contain ':'")  # fmt: skip
    for _ in range(3):
        scheduler.tick()
    assert mails == [(user, "drivesync: some files have not reached your OneDrive")]
    assert notices.banner(user) is not None and notices.banner(user).failing == 2  # type: ignore[union-attr]
    set_file(user, a, onedrive_sync_status="synced", failing_since=None)
    scheduler.tick()
    assert len(mails) == 1  # b still fails: the same episode
    set_file(user, b, onedrive_sync_status="synced", failing_since=None)
    scheduler.tick()
    assert notices.banner(user) is None
    assert db.session.execute(db.select(Integration.notice_since)).scalar_one() is None
    set_file(user, b, onedrive_sync_status="error", failing_since=long_ago)
    scheduler.tick()
    scheduler.tick()
    assert len(mails) == 2


def test_a_young_failure_is_not_an_episode(
    app: Flask, user: int, ctx: None, make_file: Callable[..., int], mails: list[Any]
) -> None:
    """A file failing for an hour makes no banner and no e-mail yet."""
    fid = make_file(user, "a.txt", b"a")
    set_file(user, fid, onedrive_sync_status="error", failing_since=utcnow() - timedelta(hours=1))
    scheduler.tick()
    assert mails == [] and notices.banner(user) is None


def test_reconnect_needed_is_one_notice_until_reconnected(
    app: Flask, user: int, ctx: None, mails: list[Any]
) -> None:
    """Reconnect needed: one e-mail; reconnecting ends the episode; a later one mails again."""
    integrations.mark_needs_reauth(user, "revoked")
    scheduler.tick()
    scheduler.tick()
    assert mails == [(user, "drivesync: reconnect OneDrive to keep your files in sync")]
    db.session.execute(update(Integration).values(status="active"))
    db.session.commit()
    scheduler.tick()
    assert db.session.execute(db.select(Integration.notice_sent_at)).scalar_one() is None
    integrations.mark_needs_reauth(user, "revoked again")
    scheduler.tick()
    assert len(mails) == 2


def test_banner_on_every_page(
    app: Flask, client: Any, login: Callable[[int], None], user: int
) -> None:
    """A connection needing a reconnect shows one banner on the library and settings pages."""
    login(user)
    assert 'id="sync-notice"' not in client.get("/library/").get_data(as_text=True)
    with app.app_context(), user_scope(user):
        integrations.mark_needs_reauth(user, "revoked")
    for path in ("/library/", "/settings/onedrive/"):
        html = client.get(path).get_data(as_text=True)
        assert html.count('id="sync-notice"') == 1
        assert "Reconnect OneDrive" in html


def test_settings_page_shows_the_next_try(
    app: Flask, client: Any, login: Callable[[int], None], user: int, fake: FakeDrive,
    make_file: Callable[..., int],
) -> None:  # fmt: skip
    """A transient failure reads "Next try in … (attempt 2)" with Retry now; no false promise."""
    fid = make_file(user, "a.txt", b"a")
    with app.app_context(), user_scope(user):
        fail_once(fake, user, fid, GraphError("down", status=503))
        set_file(user, fid, next_attempt_at=utcnow() + timedelta(minutes=7, seconds=20),
                 sync_attempts=2)  # fmt: skip
    login(user)
    html = client.get("/settings/onedrive/").get_data(as_text=True)
    assert "Next try in 7 min (attempt 3)" in html
    assert "Retry now" in html
    assert "will resume later" not in html


# -- the cross-user query ------------------------------------------------------------------------


def test_due_users_finds_exactly_the_users_with_due_work(
    app: Flask, make_user: Callable[..., int], link_onedrive: Callable[..., None],
    make_file: Callable[..., int],
) -> None:  # fmt: skip
    """One query, outside any user scope (RLS on PostgreSQL), names each kind of due work."""
    now = utcnow()
    past, future = now - timedelta(seconds=1), now + timedelta(hours=1)
    users = {name: make_user() for name in ("idle", "autosync", "retry", "paused_retry", "stale",
                                            "queued", "reauth", "later")}  # fmt: skip
    link_onedrive(users["idle"])
    link_onedrive(users["autosync"], autosync=True, autosync_due_at=past)
    link_onedrive(users["retry"])
    link_onedrive(users["paused_retry"], paused_at=past)
    link_onedrive(users["stale"])
    link_onedrive(users["queued"])
    link_onedrive(users["reauth"], status="needs_reauth")
    link_onedrive(users["later"], autosync=True, autosync_due_at=future)
    with app.app_context():
        for name, values in (
            ("idle", {"onedrive_sync_status": "synced"}),
            ("retry", {"onedrive_sync_status": "error", "next_attempt_at": past}),
            ("paused_retry", {"onedrive_sync_status": "error", "next_attempt_at": past}),
            (
                "stale",
                {"onedrive_sync_status": "syncing", "heartbeat_at": now - timedelta(hours=1)},
            ),
            ("later", {"onedrive_sync_status": "error", "next_attempt_at": future}),
        ):
            uid = users[name]
            fid = make_file(uid, "f.txt", b"f")
            with user_scope(uid):
                set_file(uid, fid, **values)
        with user_scope(users["queued"]):
            db.session.add(SyncRun(user_id=users["queued"], status="queued",
                                   created_at=now - timedelta(hours=1)))  # fmt: skip
            db.session.commit()
        assert scheduler.due_users(now) == sorted(
            users[n] for n in ("autosync", "retry", "stale", "queued", "reauth")
        )


# -- the embedded scheduler -----------------------------------------------------------------------


def test_in_process_scheduler_fires_and_is_woken_early(
    app: Flask, user: int, make_file: Callable[..., int], fake: FakeDrive
) -> None:
    """The embedded thread ticks by itself, and a wake-up makes it tick before its interval."""
    fid = make_file(user, "a.txt", b"a")
    thread = scheduler.start_in_process(app, interval=3600)
    try:
        deadline = time.monotonic() + 10
        while thread.ticks < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thread.ticks >= 1  # the first tick runs at start
        with app.app_context(), user_scope(user):
            set_file(user, fid, onedrive_sync_status="error", failure_kind="transient",
                     next_attempt_at=utcnow())  # fmt: skip
        assert scheduler.notify(0.1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with app.app_context(), user_scope(user):
                if row(fid).onedrive_sync_status == "synced":
                    break
            time.sleep(0.05)
        with app.app_context(), user_scope(user):
            assert row(fid).onedrive_sync_status == "synced"
    finally:
        scheduler.stop_in_process()
    assert not scheduler.notify(0)


@pytest.mark.postgres
def test_the_scheduler_setting_opens_nothing_to_the_app_role(
    app: Flask, make_user: Callable[..., int], make_file: Callable[..., int]
) -> None:
    """As the app role, app.scheduler = 'on' shows no rows; only the owner's function reads."""
    from sqlalchemy import create_engine, text

    from tests.conftest import PG_APP_URL, PG_OWNER_URL

    if not PG_OWNER_URL or PG_APP_URL == PG_OWNER_URL:
        pytest.skip("needs PostgreSQL with the app's own role (DRIVESYNC_TEST_POSTGRES_APP_URL)")
    uid = make_user()
    make_file(uid, "a.txt", b"a")
    engine = create_engine(PG_APP_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('app.scheduler', 'on', true)"))
            assert conn.execute(text("SELECT count(*) FROM files")).scalar_one() == 0
            conn.execute(text("SELECT * FROM drivesync_due_users(now(), now(), now(), now(), "
                              "now(), now())")).all()  # fmt: skip
            # The function puts the setting back: still nothing visible afterwards.
            assert conn.execute(text("SELECT count(*) FROM files")).scalar_one() == 0
    finally:
        engine.dispose()
