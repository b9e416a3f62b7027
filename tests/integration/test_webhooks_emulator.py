"""Change notifications end to end: the app served over TLS, the emulator subscribing it on
connect, validating its endpoint, and posting real notifications after a remote edit."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update
from werkzeug.serving import BaseWSGIServer, make_server

from drivesync import tasks
from drivesync.extensions import db
from drivesync.models import GraphSubscription, Integration, utcnow
from drivesync.scope import user_scope
from drivesync.services import subscriptions
from onedrive_emulator.client import EmulatorAdmin
from tests.conftest import sign_in_as
from tests.fixtures_emulator import ALEX, EmulatorCA, csrf_from

pytestmark = [pytest.mark.slow, pytest.mark.emulator]


@pytest.fixture
def served(app: Flask, emulator_ca: EmulatorCA | None) -> Iterator[str]:
    """Serve ``app`` over HTTPS (a certificate from the session CA); PUBLIC_URL points at it."""
    if emulator_ca is None:
        pytest.skip("Graph only notifies https:// URLs: needs the emulator's TLS")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    emulator_ca.ca.issue_cert("127.0.0.1").configure_cert(context)
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_port}"
    app.config["PUBLIC_URL"] = url
    try:
        yield url
    finally:
        server.shutdown()
        thread.join(5)


def _integration(app: Flask, user: int) -> Integration:
    with app.app_context(), user_scope(user):
        row = db.session.execute(db.select(Integration)).scalar_one()
        db.session.expunge(row)
        return row


def _wait(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_remote_edit_makes_a_delta_check_due(
    app: Flask, served: str, emu: EmulatorAdmin, client: FlaskClient,
    make_user: Callable[..., int], connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Connect subscribes (the emulator validated our endpoint over TLS); an edit made in
    OneDrive is notified and makes the user's delta check due; a forged notification does
    nothing; disconnect deletes the subscription on Graph."""
    wakes: list[int] = []
    monkeypatch.setattr(tasks, "wake_user", lambda uid, delay: wakes.append(uid))
    user = make_user()
    sign_in_as(client, user)
    assert connect().status_code == 303
    remote = emu.list_subscriptions()
    assert len(remote) == 1
    assert remote[0]["notificationUrl"] == f"{served}/hooks/onedrive"
    assert remote[0]["lifecycleNotificationUrl"] == f"{served}/hooks/onedrive/lifecycle"
    with app.app_context(), user_scope(user):
        assert subscriptions.live(user)
        row = db.session.execute(db.select(GraphSubscription)).scalar_one()
        assert row.subscription_id == remote[0]["id"]
        # Forget any check connecting scheduled: only the notification may make one due.
        db.session.execute(update(Integration).values(delta_due_at=None,
                                                      delta_checked_at=utcnow()))  # fmt: skip
        db.session.commit()
    folder = _integration(app, user).folder_path

    forged = requests.post(
        f"{served}/hooks/onedrive",
        json={"value": [{"subscriptionId": remote[0]["id"], "clientState": "guess",
                         "changeType": "updated", "resource": "me/drive/root"}]},
        timeout=10,
    )  # fmt: skip
    assert (forged.status_code, forged.content) == (202, b"")
    assert _integration(app, user).delta_due_at is None

    emu.modify_item(ALEX, f"/{folder}/edited-in-onedrive.txt", b"changed elsewhere")
    assert _wait(lambda: _integration(app, user).delta_due_at is not None), emu.notifications_log()
    assert _integration(app, user).delta_due_at <= utcnow()
    assert wakes == [user]
    delivered = [e for e in emu.notifications_log() if e["url"].endswith("/hooks/onedrive")]
    assert delivered and all(e["status"] == 202 for e in delivered)

    token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
    client.post("/settings/onedrive/disconnect", data={"csrf_token": token})
    assert emu.list_subscriptions() == []


def test_reauthorization_required_renews_through_the_scheduler(
    app: Flask, served: str, emu: EmulatorAdmin, client: FlaskClient,
    make_user: Callable[..., int], connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The emulator's reauthorizationRequired reaches the lifecycle URL; the next reconcile
    renews the subscription (PATCH), which also reauthorizes it."""
    monkeypatch.setattr(tasks, "wake_user", lambda uid, delay: None)
    user = make_user()
    sign_in_as(client, user)
    connect()
    sub_id = emu.list_subscriptions()[0]["id"]
    emu.subscription_lifecycle(sub_id, "reauthorizationRequired")

    def renewal_due() -> bool:
        with app.app_context(), user_scope(user):
            row = db.session.execute(db.select(GraphSubscription)).scalar_one()
            return row.renew_at is not None and row.renew_at <= utcnow()

    assert _wait(renewal_due)
    assert emu.list_subscriptions()[0]["needsReauthorization"] is True
    with app.app_context(), user_scope(user):
        subscriptions.maintain(user)
        row = db.session.execute(db.select(GraphSubscription)).scalar_one()
        assert row.renewed_at is not None and row.renew_at > utcnow()
    assert emu.list_subscriptions()[0]["needsReauthorization"] is False


def test_subscription_removed_is_recreated(
    app: Flask, served: str, emu: EmulatorAdmin, client: FlaskClient,
    make_user: Callable[..., int], connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """subscriptionRemoved: the renewal answers 404, a new subscription (new id, new
    clientState) replaces it, and a delta check is due for the changes nobody notified."""
    monkeypatch.setattr(tasks, "wake_user", lambda uid, delay: None)
    user = make_user()
    sign_in_as(client, user)
    connect()
    first = emu.list_subscriptions()[0]
    with app.app_context(), user_scope(user):
        db.session.execute(update(Integration).values(delta_due_at=None,
                                                      delta_checked_at=utcnow()))  # fmt: skip
        db.session.commit()
    emu.subscription_lifecycle(first["id"], "subscriptionRemoved")
    assert _wait(lambda: _integration(app, user).delta_due_at is not None)
    with app.app_context(), user_scope(user):
        subscriptions.maintain(user)
        assert subscriptions.live(user)
    now = emu.list_subscriptions()
    assert len(now) == 1 and now[0]["id"] != first["id"]
    assert now[0]["clientState"] != first["clientState"]
