"""services/subscriptions.py and the /hooks/onedrive endpoint, with Graph mocked by responses."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text, update

from drivesync import tasks
from drivesync.extensions import db
from drivesync.models import GraphSubscription, Integration, utcnow
from drivesync.scope import user_scope
from drivesync.services import changes, deletion, integrations, scheduler, subscriptions
from drivesync.web import storage
from tests.conftest import PASSWORD, PG_APP_URL, PG_OWNER_URL, csrf_token, sign_in_as

GRAPH = "https://graph.microsoft.com/v1.0"
PUBLIC = "https://drivesync.example"
SUBS = f"{GRAPH}/subscriptions"


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """Webhooks on: an https public URL; a token endpoint that is never reached."""
    return {
        "PUBLIC_URL": PUBLIC,
        "MS_CLIENT_ID": "client",
        "MS_CLIENT_SECRET": "secret",
        "MS_AUTHORITY": "https://login.example",
        "GRAPH_URL": GRAPH,
    }


@pytest.fixture
def user(make_user: Callable[..., int], link_onedrive: Callable[..., None], app: Flask) -> int:
    """A connected user with a fresh token."""
    uid = make_user()
    link_onedrive(uid)
    with app.app_context(), user_scope(uid):
        integration = db.session.execute(db.select(Integration)).scalar_one()
        integration.drive_type = "business"
        integrations.save_token(integration, {"access_token": "tok", "refresh_token": "r",
                                              "expires_in": 3600})  # fmt: skip
        db.session.commit()
    return uid


@pytest.fixture
def ctx(app: Flask, user: int) -> Iterator[None]:
    """An app context scoped to the user."""
    with app.app_context(), user_scope(user):
        yield


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """Mocked Graph."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def _created(*sub_ids: str, days: int = 29) -> Callable[[Any], tuple[int, dict, str]]:
    ids = iter(sub_ids or ("sub-1",))

    def answer(request: Any) -> tuple[int, dict, str]:
        body = json.loads(request.body)
        out = {**body, "id": next(ids),
               "expirationDateTime": (utcnow() + timedelta(days=days)).isoformat()}  # fmt: skip
        return 201, {}, json.dumps(out)

    return answer


def _row() -> GraphSubscription:
    db.session.expire_all()
    row = db.session.execute(
        db.select(GraphSubscription).options(
            db.undefer(GraphSubscription.client_state_encrypted)  # type: ignore[attr-defined]
        )
    ).scalar_one_or_none()
    assert row is not None
    return row


def _sent_state(rsps: responses.RequestsMock, index: int = 0) -> str:
    posts = [c for c in rsps.calls if c.request.method == "POST"]
    return str(json.loads(posts[index].request.body)["clientState"])


def _subscribe(rsps: responses.RequestsMock, user: int, *sub_ids: str) -> str:
    rsps.add_callback(responses.POST, SUBS, callback=_created(*sub_ids))
    assert subscriptions.ensure(user) is True
    return _sent_state(rsps)


# -- the service ----------------------------------------------------------------------------------


def test_ensure_subscribes_with_an_encrypted_client_state(
    user: int, ctx: None, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """One POST with the documented fields; the clientState is stored only encrypted, never
    logged; renew_at lies ahead of expiry; a second ensure does nothing."""
    caplog.set_level(logging.DEBUG)
    state = _subscribe(rsps, user)
    body = json.loads(rsps.calls[0].request.body)
    assert body["notificationUrl"] == f"{PUBLIC}/hooks/onedrive"
    assert body["lifecycleNotificationUrl"] == f"{PUBLIC}/hooks/onedrive/lifecycle"
    assert body["resource"] == "me/drive/root"  # business: root only
    assert body["changeType"] == "updated"
    assert 43 <= len(state) <= 128
    row = _row()
    assert state not in row.client_state_encrypted
    assert row.renew_at is not None and row.renew_at < row.expires_at
    raw = db.session.execute(text("SELECT * FROM graph_subscriptions")).all()
    assert state not in repr(raw)
    assert state not in caplog.text and state not in repr(row)
    assert subscriptions.live(user)
    assert subscriptions.ensure(user) is True
    assert len(rsps.calls) == 1


def test_personal_drives_subscribe_to_the_sync_folder(
    app: Flask, make_user: Callable[..., int], link_onedrive: Callable[..., None],
    rsps: responses.RequestsMock,
) -> None:  # fmt: skip
    """A personal OneDrive may subscribe to a subfolder: the sync folder itself."""
    uid = make_user()
    link_onedrive(uid)
    with app.app_context(), user_scope(uid):
        integration = db.session.execute(db.select(Integration)).scalar_one()
        integration.folder_id = "ABC!101"
        integrations.save_token(integration, {"access_token": "t", "expires_in": 3600})
        db.session.commit()
        _subscribe(rsps, uid)
        assert json.loads(rsps.calls[0].request.body)["resource"] == "me/drive/items/ABC!101"


def test_no_https_public_url_means_no_subscription(
    app: Flask, user: int, ctx: None, rsps: responses.RequestsMock
) -> None:
    """Without an https public URL (or with webhooks off) nothing is created."""
    app.config["PUBLIC_URL"] = "http://drivesync.example"
    assert subscriptions.ensure(user) is False
    app.config.update(PUBLIC_URL=PUBLIC, WEBHOOKS="off")
    assert subscriptions.ensure(user) is False
    assert len(rsps.calls) == 0


def test_a_refused_create_is_logged_and_left_to_the_scheduler(
    user: int, ctx: None, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    """Graph's 400 (validation failed) leaves no row and raises nothing."""
    rsps.post(SUBS, status=400, json={"error": {"code": "InvalidRequest", "message": "no"}})
    assert subscriptions.ensure(user) is False
    assert db.session.execute(db.select(GraphSubscription)).first() is None
    assert "could not subscribe" in caplog.text
    assert _sent_state(rsps) not in caplog.text


def test_maintain_renews_when_due(user: int, ctx: None, rsps: responses.RequestsMock) -> None:
    """Not due: no request. Due: PATCH, new expiry, renew_at moved ahead."""
    _subscribe(rsps, user)
    subscriptions.maintain(user)
    assert len(rsps.calls) == 1
    now = utcnow()
    db.session.execute(update(GraphSubscription).values(renew_at=now - timedelta(seconds=1)))
    db.session.commit()
    new_expiry = now + timedelta(days=29, hours=12)
    rsps.patch(f"{SUBS}/sub-1", json={"id": "sub-1", "resource": "me/drive/root",
                                      "expirationDateTime": new_expiry.isoformat()})  # fmt: skip
    subscriptions.maintain(user, now)
    assert rsps.calls[-1].request.method == "PATCH"
    row = _row()
    assert row.expires_at == new_expiry.replace(microsecond=row.expires_at.microsecond)
    assert row.renew_at is not None and row.renew_at > now
    assert row.renewed_at == now


def test_maintain_recreates_a_subscription_graph_forgot(
    user: int, ctx: None, rsps: responses.RequestsMock
) -> None:
    """Renewal answers 404: the row is replaced by a new subscription with a new clientState."""
    first = _subscribe(rsps, user, "sub-1", "sub-2")
    db.session.execute(update(GraphSubscription).values(renew_at=utcnow()))
    db.session.commit()
    rsps.patch(f"{SUBS}/sub-1", status=404, json={"error": {"code": "ResourceNotFound"}})
    subscriptions.maintain(user)
    row = _row()
    assert row.subscription_id == "sub-2"
    second = _sent_state(rsps, 1)
    assert second != first


def test_a_failed_renewal_is_retried_later(
    user: int, ctx: None, rsps: responses.RequestsMock
) -> None:
    """A 403 keeps the row, records the error and moves renew_at a little ahead."""
    _subscribe(rsps, user)
    now = utcnow()
    db.session.execute(update(GraphSubscription).values(renew_at=now))
    db.session.commit()
    rsps.patch(f"{SUBS}/sub-1", status=403, json={"error": {"code": "accessDenied"}})
    subscriptions.maintain(user, now)
    row = _row()
    assert row.error and "403" in row.error
    assert row.renew_at == now + subscriptions.RETRY_AFTER


def test_maintain_creates_a_missing_one_and_skips_inactive(
    app: Flask, user: int, ctx: None, rsps: responses.RequestsMock
) -> None:
    """No row + active connection: create. Reconnect needed: nothing."""
    db.session.execute(update(Integration).values(status="needs_reauth"))
    db.session.commit()
    subscriptions.maintain(user)
    assert len(rsps.calls) == 0
    db.session.execute(update(Integration).values(status="active"))
    db.session.commit()
    rsps.add_callback(responses.POST, SUBS, callback=_created())
    subscriptions.maintain(user)
    assert subscriptions.live(user)


def test_remove_deletes_on_graph_and_drops_the_row(
    user: int, ctx: None, rsps: responses.RequestsMock
) -> None:
    """DELETE on Graph, row gone; a Graph failure does not keep the row."""
    _subscribe(rsps, user)
    rsps.delete(f"{SUBS}/sub-1", status=500, json={"error": {"code": "generalException"}})
    assert subscriptions.remove(user) is True
    assert rsps.calls[-1].request.method == "DELETE"
    assert db.session.execute(db.select(GraphSubscription)).first() is None
    assert subscriptions.remove(user) is False


def test_scheduler_reconcile_renews(user: int, ctx: None, rsps: responses.RequestsMock) -> None:
    """renew_at <= now makes the user due, and the tick renews."""
    _subscribe(rsps, user)
    db.session.execute(update(GraphSubscription).values(renew_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    rsps.patch(f"{SUBS}/sub-1", json={"id": "sub-1", "expirationDateTime":
                                      (utcnow() + timedelta(days=29)).isoformat()})  # fmt: skip
    assert user in scheduler.tick()
    assert rsps.calls[-1].request.method == "PATCH"
    assert _row().renewed_at is not None


def test_disconnect_view_removes_the_subscription(
    app: Flask, user: int, rsps: responses.RequestsMock, client: FlaskClient
) -> None:
    """POST /settings/onedrive/disconnect deletes the subscription on Graph first."""
    with app.app_context(), user_scope(user):
        _subscribe(rsps, user)
    rsps.delete(f"{SUBS}/sub-1", status=204)
    sign_in_as(client, user)
    token = csrf_token(client)
    client.post("/settings/onedrive/disconnect", data={"csrf_token": token})
    assert any(c.request.method == "DELETE" for c in rsps.calls)
    with app.app_context(), user_scope(user):
        assert db.session.execute(db.select(GraphSubscription)).first() is None


# -- the endpoint ---------------------------------------------------------------------------------


def _post(client: FlaskClient, items: list[dict[str, Any]], path: str = "/hooks/onedrive") -> Any:
    return client.post(path, json={"value": items})


def _note(state: str, sub_id: str = "sub-1", **extra: Any) -> dict[str, Any]:
    return {"subscriptionId": sub_id, "clientState": state, "changeType": "updated",
            "resource": "me/drive/root", "tenantId": "t", **extra}  # fmt: skip


def _integration(app: Flask, user: int) -> Integration:
    with app.app_context(), user_scope(user):
        row = db.session.execute(db.select(Integration)).scalar_one()
        db.session.expunge(row)
        return row


@pytest.fixture
def subscribed(app: Flask, user: int, rsps: responses.RequestsMock) -> str:
    """The user's subscription exists; return its clientState."""
    with app.app_context(), user_scope(user):
        state = _subscribe(rsps, user)
        db.session.execute(update(Integration).values(delta_checked_at=utcnow()))
        db.session.commit()
    return state


def test_validation_handshake_echoes_the_token(client: FlaskClient) -> None:
    """200, text/plain, the decoded token, on both URLs; nothing else needed."""
    for path in ("/hooks/onedrive", "/hooks/onedrive/lifecycle"):
        resp = client.post(f"{path}?validationToken=Validation%3A%20Testing%20client%20app")
        assert resp.status_code == 200
        assert resp.mimetype == "text/plain"
        assert resp.get_data(as_text=True) == "Validation: Testing client app"
    for hostile in ("%3Cscript%3Ealert(1)%3C/script%3E", "a%0Ab", "x" * 5000, ""):
        resp = client.post(f"/hooks/onedrive?validationToken={hostile}")
        assert resp.status_code == 400 and resp.get_data() == b""


def test_a_forged_client_state_changes_nothing_and_looks_the_same(
    app: Flask, user: int, subscribed: str, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong clientState, unknown subscription and a valid one get the same answer; only the
    valid one records anything."""
    wakes: list[int] = []
    monkeypatch.setattr(tasks, "wake_user", lambda uid, delay: wakes.append(uid))
    forged = _post(client, [_note("x" * len(subscribed))])
    unknown = _post(client, [_note(subscribed, sub_id="nope")])
    after = _integration(app, user)
    assert after.delta_due_at is None
    with app.app_context(), user_scope(user):
        assert _row().last_notified_at is None
    valid = _post(client, [_note(subscribed)])
    answers = {(r.status_code, r.get_data()) for r in (forged, unknown, valid)}
    assert answers == {(202, b"")}
    assert _integration(app, user).delta_due_at is not None
    assert wakes == [user]


def test_duplicate_notifications_coalesce_into_one_due_check(
    app: Flask, user: int, subscribed: str, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten notifications (one batch of five, then five requests) make one due time, one wake."""
    wakes: list[int] = []
    monkeypatch.setattr(tasks, "wake_user", lambda uid, delay: wakes.append(uid))
    assert _post(client, [_note(subscribed)] * 5).status_code == 202
    due = _integration(app, user).delta_due_at
    for _ in range(5):
        assert _post(client, [_note(subscribed)]).status_code == 202
    assert _integration(app, user).delta_due_at == due
    assert wakes == [user]
    with app.app_context(), user_scope(user):
        assert _row().last_notified_at is not None


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"x" * (300 * 1024), "application/json", 413),
        (b"value=1", "application/x-www-form-urlencoded", 415),
        (b"{not json", "application/json", 400),
        (b'{"value": {"a": 1}}', "application/json", 400),
        (b"[]", "application/json", 400),
    ],
)
def test_bad_bodies_are_refused(
    client: FlaskClient, data: bytes, content_type: str, status: int
) -> None:
    """Oversized, non-JSON or wrongly shaped bodies are refused before any work."""
    assert client.post("/hooks/onedrive", data=data, content_type=content_type).status_code == (
        status
    )


def test_lifecycle_events(
    app: Flask, user: int, subscribed: str, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reauthorizationRequired makes the renewal due now; missed asks for a delta check."""
    monkeypatch.setattr(tasks, "wake_user", lambda uid, delay: None)
    resp = _post(client, [_note(subscribed, lifecycleEvent="reauthorizationRequired")],
                 "/hooks/onedrive/lifecycle")  # fmt: skip
    assert resp.status_code == 202
    with app.app_context(), user_scope(user):
        row = _row()
        assert row.renew_at is not None and row.renew_at <= utcnow()
    assert _integration(app, user).delta_due_at is None
    _post(client, [_note(subscribed, lifecycleEvent="missed")], "/hooks/onedrive/lifecycle")
    assert _integration(app, user).delta_due_at is not None


def test_forged_lifecycle_event_changes_nothing(
    app: Flask, user: int, subscribed: str, client: FlaskClient
) -> None:
    """A subscriptionRemoved with a wrong clientState does not touch the subscription."""
    with app.app_context(), user_scope(user):
        before = _row().renew_at
    bad = _note("wrong", lifecycleEvent="subscriptionRemoved")
    assert _post(client, [bad], "/hooks/onedrive/lifecycle").status_code == 202
    with app.app_context(), user_scope(user):
        assert _row().renew_at == before


@pytest.mark.parametrize("app_overrides", [{
    "PUBLIC_URL": PUBLIC, "RATELIMIT_ENABLED": True, "WEBHOOK_RATE_LIMIT": "3 per minute",
}])  # fmt: skip
def test_the_endpoint_is_rate_limited(client: FlaskClient) -> None:
    """Past the limit the endpoint answers 429 without reading the body."""
    codes = [_post(client, [_note("x")]).status_code for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429]


@pytest.mark.parametrize("app_overrides", [{
    "PUBLIC_URL": PUBLIC, "MS_CLIENT_ID": "client", "MS_CLIENT_SECRET": "secret",
    "MS_AUTHORITY": "https://login.example", "GRAPH_URL": GRAPH, "TASK_BACKEND": "thread",
}])  # fmt: skip
def test_a_slow_delta_check_never_delays_the_answer(
    app: Flask, user: int, subscribed: str, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs in the scheduler: while it blocks, notifications still get 202 at once."""
    started, release = threading.Event(), threading.Event()

    def slow_check(user_id: int, *args: Any) -> None:
        db.session.commit()  # a check does its Graph calls outside a transaction
        started.set()
        release.wait(20)

    monkeypatch.setattr(scheduler, "check_remote_changes", slow_check)
    scheduler.start_in_process(app, interval=3600)
    try:
        t0 = time.monotonic()
        assert _post(client, [_note(subscribed)]).status_code == 202
        assert time.monotonic() - t0 < 1.0
        assert started.wait(10), "the notification should have woken the scheduler's check"
        with app.app_context(), user_scope(user):
            db.session.execute(update(Integration).values(delta_due_at=None))
            db.session.commit()
        t0 = time.monotonic()
        assert _post(client, [_note(subscribed)]).status_code == 202
        assert time.monotonic() - t0 < 1.0  # the check is still blocked
        assert not release.is_set()
    finally:
        release.set()
        scheduler.stop_in_process()
    assert changes.REQUEST_GAP > timedelta(0)  # the endpoint bypasses the page-view gap


@pytest.mark.postgres
def test_owner_lookup_under_row_level_security(
    app: Flask, user: int, subscribed: str, client: FlaskClient, make_user: Callable[..., int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """As the app role with no user in scope, the row is invisible; the SECURITY DEFINER
    function names its owner and nothing else; a notification then works end to end."""
    if not PG_OWNER_URL or PG_APP_URL == PG_OWNER_URL:
        pytest.skip("needs PostgreSQL with the app's own role (DRIVESYNC_TEST_POSTGRES_APP_URL)")
    other = make_user()
    with app.app_context():
        assert db.session.get_bind().dialect.name == "postgresql"
        assert db.session.execute(db.select(GraphSubscription)).first() is None  # RLS
        assert subscriptions.owner_of("sub-1") == user
        assert subscriptions.owner_of("nope") is None
        db.session.rollback()
        with user_scope(other):
            assert db.session.execute(db.select(GraphSubscription)).first() is None
        db.session.rollback()
    monkeypatch.setattr(tasks, "wake_user", lambda uid, delay: None)
    assert _post(client, [_note(subscribed)]).status_code == 202
    assert _integration(app, user).delta_due_at is not None


def test_a_mixed_batch_acts_only_on_the_genuine_notification(
    app: Flask, user: int, subscribed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forged, malformed and genuine notifications in one batch: only the genuine one counts,
    duplicates are handled once."""
    monkeypatch.setattr(tasks, "wake_user", lambda uid, delay: None)
    batch: list[Any] = [_note("forged"), "junk", {"subscriptionId": 7}, _note(subscribed),
                        _note(subscribed), _note(subscribed, sub_id="x" * 200)]  # fmt: skip
    with app.app_context():
        result = subscriptions.receive(batch)
    assert (result.accepted, result.refused) == (1, 4)
    assert _integration(app, user).delta_due_at is not None


def test_deleting_the_account_deletes_the_subscription(
    app: Flask, user: int, subscribed: str, rsps: responses.RequestsMock
) -> None:
    """Account deletion removes the subscription on Graph, not only the row."""
    rsps.delete(f"{SUBS}/sub-1", status=204)
    with app.test_request_context(), user_scope(user):
        deletion.delete_account(user, PASSWORD, storage())
    assert [c.request.method for c in rsps.calls].count("DELETE") == 1


def test_a_subscription_that_no_longer_fits_is_replaced(
    app: Flask, user: int, ctx: None, rsps: responses.RequestsMock
) -> None:
    """Reconnected to another folder, or a new public URL: the old subscription is deleted on
    Graph and a new one watches the right resource and URL."""
    _subscribe(rsps, user, "sub-1", "sub-2", "sub-3")
    rsps.delete(f"{SUBS}/sub-1", status=204)
    rsps.delete(f"{SUBS}/sub-2", status=204)
    db.session.execute(update(Integration).values(drive_type="personal", folder_id="NEW!7"))
    db.session.commit()
    subscriptions.maintain(user)
    row = _row()
    assert (row.subscription_id, row.resource) == ("sub-2", "me/drive/items/NEW!7")
    app.config["PUBLIC_URL"] = "https://moved.example"
    subscriptions.maintain(user)
    row = _row()
    assert (row.subscription_id, row.notification_url) == (
        "sub-3", "https://moved.example/hooks/onedrive")  # fmt: skip
    assert [c.request.url for c in rsps.calls if c.request.method == "DELETE"] == [
        f"{SUBS}/sub-1", f"{SUBS}/sub-2"]  # fmt: skip
