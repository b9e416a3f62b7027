"""The emulator's change-notification subscriptions, over real sockets and TLS both ways."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from onedrive_emulator import subscriptions
from onedrive_emulator.app import create_emulator_app
from onedrive_emulator.state import EmulatorState
from onedrive_emulator.tls import new_ca
from tests.fixtures_emulator import EmulatorCA

from .conftest import ALEX, MEGAN, Env
from .notify_receiver import Receiver, start_receiver

pytestmark = pytest.mark.emulator


@pytest.fixture
def receiver(emulator_ca: EmulatorCA | None) -> Iterator[Receiver]:
    """An HTTPS notification endpoint trusted through the emulator's notify_ca."""
    if emulator_ca is None:
        pytest.skip("notification URLs must be https: needs the emulator's TLS")
    r = start_receiver(emulator_ca)
    yield r
    assert r.server is not None
    r.server.shutdown()


def _when(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def _body(receiver: Receiver, **changes: Any) -> dict[str, Any]:
    body = {
        "changeType": "updated",
        "notificationUrl": f"{receiver.url}/hook",
        "lifecycleNotificationUrl": f"{receiver.url}/life",
        "resource": "me/drive/root",
        "expirationDateTime": _when(60 * 24),
        "clientState": "secret-client-state",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def _create(env: Env, http: requests.Session, receiver: Receiver, **changes: Any) -> dict:
    resp = http.post(f"{env.graph}/subscriptions", json=_body(receiver, **changes), timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_create_validates_both_urls_then_answers_201(
    env: Env, http: requests.Session, receiver: Receiver
) -> None:
    """POST ?validationToken=… (text/plain) to the notification and lifecycle URLs, then 201."""
    sub = _create(env, http, receiver)
    checks = [h for h in receiver.hits if "validationToken" in h.query]
    assert [h.path for h in checks] == ["/hook", "/life"]
    assert all(h.content_type.startswith("text/plain") for h in checks)
    assert sub["changeType"] == "updated" and sub["clientState"] == "secret-client-state"
    assert sub["resource"] == "me/drive/root" and sub["id"]
    got = http.get(f"{env.graph}/subscriptions/{sub['id']}", timeout=10).json()
    assert got["expirationDateTime"] == sub["expirationDateTime"]
    listed = http.get(f"{env.graph}/subscriptions", timeout=10).json()["value"]
    assert [s["id"] for s in listed] == [sub["id"]]
    other = env.session(MEGAN)
    assert other.get(f"{env.graph}/subscriptions/{sub['id']}", timeout=10).status_code == 404


@pytest.mark.parametrize("mode", ["wrong", "html"])
def test_a_wrong_validation_answer_fails_the_create(
    env: Env, http: requests.Session, receiver: Receiver, mode: str
) -> None:
    """An endpoint that does not echo the token as text/plain gets no subscription (400)."""
    receiver.validation = mode
    resp = http.post(f"{env.graph}/subscriptions", json=_body(receiver), timeout=30)
    assert resp.status_code == 400
    assert "validation" in resp.json()["error"]["message"]
    assert env.admin.list_subscriptions() == []


@pytest.mark.parametrize(
    "changes",
    [
        {"changeType": "created,updated"},
        {"changeType": "deleted"},
        {"notificationUrl": "http://127.0.0.1:9/hook"},
        {"lifecycleNotificationUrl": "http://127.0.0.1:9/life"},
        {"clientState": "x" * 129},
        {"expirationDateTime": _when(42300 + 5)},
        {"expirationDateTime": _when(-1)},
        {"expirationDateTime": None},
        {"resource": "me/drive/root:/drivesync:"},
        {"resource": "me/messages"},
    ],
)
def test_documented_rules_are_enforced(
    env: Env, http: requests.Session, receiver: Receiver, changes: dict[str, Any]
) -> None:
    """updated only, https only, clientState <= 128, expiry within 42,300 minutes, driveItem
    root (or a personal subfolder) only: anything else is a 400 and sends no validation."""
    resp = http.post(f"{env.graph}/subscriptions", json=_body(receiver, **changes), timeout=30)
    assert resp.status_code == 400, resp.text
    assert not [h for h in receiver.hits if "validationToken" in h.query]


def test_folders_personal_yes_business_root_only(
    env: Env, http: requests.Session, receiver: Receiver
) -> None:
    """A personal drive's subfolder may be watched; a business drive's may not."""
    folder = http.post(f"{env.graph}/me/drive/root/children", json={"name": "f", "folder": {}},
                       timeout=10).json()  # fmt: skip
    _create(env, http, receiver, resource=f"me/drive/items/{folder['id']}")
    megan = env.session(MEGAN)
    folder_b = megan.post(f"{env.graph}/me/drive/root/children", json={"name": "f", "folder": {}},
                          timeout=10).json()  # fmt: skip
    resp = megan.post(f"{env.graph}/subscriptions",
                      json=_body(receiver, resource=f"me/drive/items/{folder_b['id']}"),
                      timeout=30)  # fmt: skip
    assert resp.status_code == 400
    root = megan.post(f"{env.graph}/subscriptions", json=_body(receiver), timeout=30)
    assert root.status_code == 201


def test_changes_are_notified_batched(env: Env, http: requests.Session, receiver: Receiver) -> None:
    """A remote edit makes a POST with the documented fields; a burst makes few POSTs."""
    sub = _create(env, http, receiver)
    env.admin.modify_item(ALEX, "/drivesync/a.txt", b"one")
    note = receiver.wait_for(1)[0]
    assert note["subscriptionId"] == sub["id"]
    assert note["clientState"] == "secret-client-state"
    assert note["changeType"] == "updated"
    assert note["resource"] == "me/drive/root"
    assert note["subscriptionExpirationDateTime"] and note["tenantId"]
    time.sleep(0.5)
    before = len([h for h in receiver.hits if h.path == "/hook"])
    for i in range(10):
        env.admin.modify_item(ALEX, f"/drivesync/b{i}.txt", b"x")
    time.sleep(1.5)
    posts = len([h for h in receiver.hits if h.path == "/hook"]) - before
    assert 1 <= posts <= 5


def test_a_personal_folder_subscription_ignores_changes_elsewhere(
    env: Env, http: requests.Session, receiver: Receiver
) -> None:
    """Only changes under the watched folder are notified."""
    folder = http.post(f"{env.graph}/me/drive/root/children", json={"name": "w", "folder": {}},
                       timeout=10).json()  # fmt: skip
    _create(env, http, receiver, resource=f"me/drive/items/{folder['id']}")
    env.admin.modify_item(ALEX, "/elsewhere/a.txt", b"x")
    time.sleep(1.0)
    assert receiver.notifications() == []
    env.admin.modify_item(ALEX, "/w/a.txt", b"x")
    receiver.wait_for(1)


def test_failed_deliveries_are_retried_with_back_off(
    env: Env, http: requests.Session, receiver: Receiver
) -> None:
    """Two 500s, then the third attempt gets through; the log shows attempts 0, 1, 2."""
    env.admin.set_notification_retry_base(0.1)
    _create(env, http, receiver)
    receiver.fail_next = 2
    env.admin.modify_item(ALEX, "/drivesync/a.txt", b"x")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = [e for e in env.admin.notifications_log() if e["url"].endswith("/hook")]
        if any(e["status"] == 202 for e in log):
            break
        time.sleep(0.1)
    assert [(e["attempt"], e["status"]) for e in log] == [(0, 500), (1, 500), (2, 202)]


@pytest.mark.parametrize("event", ["reauthorizationRequired", "subscriptionRemoved", "missed"])
def test_lifecycle_events_go_to_the_lifecycle_url(
    env: Env, http: requests.Session, receiver: Receiver, event: str
) -> None:
    """The admin API triggers each event; subscriptionRemoved also removes the subscription."""
    sub = _create(env, http, receiver)
    env.admin.subscription_lifecycle(sub["id"], event)
    note = receiver.wait_for(1, "/life")[0]
    assert note == {
        "subscriptionId": sub["id"],
        "subscriptionExpirationDateTime": sub["expirationDateTime"],
        "tenantId": note["tenantId"],
        "clientState": "secret-client-state",
        "lifecycleEvent": event,
    }
    status = http.get(f"{env.graph}/subscriptions/{sub['id']}", timeout=10).status_code
    assert status == (404 if event == "subscriptionRemoved" else 200)


def test_renew_reauthorize_expire_delete(
    env: Env, http: requests.Session, receiver: Receiver
) -> None:
    """PATCH within the maximum renews, beyond it fails; an expired subscription is gone."""
    sub = _create(env, http, receiver)
    url = f"{env.graph}/subscriptions/{sub['id']}"
    later = _when(42000)
    renewed = http.patch(url, json={"expirationDateTime": later}, timeout=10)
    assert renewed.status_code == 200
    assert renewed.json()["expirationDateTime"][:16] == later[:16]
    assert http.patch(url, json={"expirationDateTime": _when(50000)}, timeout=10).status_code == 400
    assert http.patch(url, json={"clientState": "new"}, timeout=10).status_code == 400
    assert http.post(f"{url}/reauthorize", timeout=10).status_code == 204
    env.admin.expire_subscription(sub["id"])
    assert http.get(url, timeout=10).status_code == 404
    assert http.patch(url, json={"expirationDateTime": later}, timeout=10).status_code == 404
    assert http.delete(url, timeout=10).status_code == 404
    second = _create(env, http, receiver)
    url2 = f"{env.graph}/subscriptions/{second['id']}"
    assert http.delete(url2, timeout=10).status_code == 204
    assert http.delete(url2, timeout=10).status_code == 404
    env.admin.modify_item(ALEX, "/drivesync/a.txt", b"x")
    time.sleep(1.0)
    assert receiver.notifications() == []


def test_deletes_and_renames_are_notified_too(
    env: Env, http: requests.Session, receiver: Receiver
) -> None:
    """A rename and a delete made with plain Graph calls are each notified."""
    env.admin.modify_item(ALEX, "/drivesync/a.txt", b"x")
    item = http.get(f"{env.graph}/me/drive/root:/drivesync/a.txt", timeout=10).json()
    _create(env, http, receiver)
    resp = http.patch(f"{env.graph}/me/drive/items/{item['id']}", json={"name": "b.txt"},
                      timeout=10)  # fmt: skip
    assert resp.status_code == 200
    receiver.wait_for(1)
    time.sleep(0.5)
    assert http.delete(f"{env.graph}/me/drive/items/{item['id']}", timeout=10).status_code == 204
    receiver.wait_for(2)


@pytest.mark.slow
def test_a_validation_answer_later_than_ten_seconds_fails_the_create(
    env: Env, http: requests.Session, receiver: Receiver
) -> None:
    """Graph waits 10 seconds for the validation answer, not longer."""
    receiver.validation = "slow"
    started = time.monotonic()
    resp = http.post(f"{env.graph}/subscriptions", json=_body(receiver), timeout=30)
    assert resp.status_code == 400
    assert 9.5 <= time.monotonic() - started < 15
    assert env.admin.list_subscriptions() == []


def test_notify_ca_is_what_deliveries_trust(tmp_path: Any) -> None:
    """Without notify_ca the system's roots are trusted; with it, that CA file alone."""
    plain = EmulatorState(seed_demo=False)
    create_emulator_app(plain)
    system = subscriptions.notifier(plain).verify()
    assert system is True or (isinstance(system, str) and system != str(tmp_path / "ca.pem"))
    trusting = EmulatorState(seed_demo=False)
    create_emulator_app(trusting, notify_ca=str(tmp_path / "ca.pem"))
    assert subscriptions.notifier(trusting).verify() == str(tmp_path / "ca.pem")
    plain.close()
    trusting.close()


def test_an_endpoint_with_an_untrusted_certificate_is_not_subscribed(
    env: Env, http: requests.Session, emulator_ca: EmulatorCA | None, tmp_path: Any
) -> None:
    """The emulator verifies TLS to the notification URL: a certificate from a CA it does not
    trust fails the validation, so the create fails."""
    if emulator_ca is None:
        pytest.skip("needs the emulator's TLS")
    stranger = new_ca()
    pem = tmp_path / "stranger.pem"
    pem.write_bytes(stranger.cert_pem.bytes())
    other = start_receiver(EmulatorCA(stranger, pem, pem))
    try:
        resp = http.post(f"{env.graph}/subscriptions", json=_body(other), timeout=30)
        assert resp.status_code == 400
        assert other.hits == []  # the TLS handshake failed before any request
    finally:
        assert other.server is not None
        other.server.shutdown()


def test_moving_out_of_a_watched_folder_is_notified(
    env: Env, http: requests.Session, receiver: Receiver
) -> None:
    """An item moved out of the watched personal folder changed that folder: notified."""
    env.admin.modify_item(ALEX, "/w/a.txt", b"x")
    env.admin.modify_item(ALEX, "/away/keep.txt", b"x")
    folder = http.get(f"{env.graph}/me/drive/root:/w", timeout=10).json()
    _create(env, http, receiver, resource=f"me/drive/items/{folder['id']}")
    env.admin.move_item(ALEX, "/w/a.txt", "/away")
    receiver.wait_for(1)
