"""graph/subscriptions.py against mocked Graph: bodies sent, typed answers, 404 as gone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import responses

from drivesync.graph import subscriptions as subs
from drivesync.graph.client import GraphClient
from drivesync.graph.errors import GraphError

from .conftest import GRAPH

NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)


def _answer(sub_id: str = "sub-1", expires: str = "2026-12-30T10:00:00.0000000Z") -> dict:
    return {
        "id": sub_id,
        "resource": "me/drive/root",
        "changeType": "updated",
        "notificationUrl": "https://app.example/hooks/onedrive",
        "expirationDateTime": expires,
        "clientState": "never-read-back",
    }


def test_create_sends_the_documented_body_and_types_the_answer(
    client: GraphClient, rsps: responses.RequestsMock
) -> None:
    """changeType updated, https URLs, clientState, expiry capped at 42,300 minutes."""
    rsps.post(f"{GRAPH}/subscriptions", json=_answer(), status=201)
    sub = subs.create(
        client,
        resource="me/drive/root",
        notification_url="https://app.example/hooks/onedrive",
        lifecycle_url="https://app.example/hooks/onedrive/lifecycle",
        client_state="s" * 64,
        expires_at=NOW + timedelta(days=90),
        now=NOW,
    )
    body = json.loads(rsps.calls[0].request.body)
    assert body["changeType"] == "updated"
    assert body["clientState"] == "s" * 64
    assert body["lifecycleNotificationUrl"].endswith("/lifecycle")
    sent = datetime.fromisoformat(body["expirationDateTime"].replace("Z", "+00:00"))
    assert sent == NOW + timedelta(minutes=42300)
    assert sub.id == "sub-1"
    assert sub.expires_at == datetime(2026, 12, 30, 10, 0, tzinfo=UTC)
    assert "never-read-back" not in repr(sub)


@pytest.mark.parametrize(
    ("url", "state"),
    [("http://app.example/hooks", "x"), ("https://app.example/hooks", ""),
     ("https://app.example/hooks", "x" * 129)],
)  # fmt: skip
def test_create_refuses_what_graph_would_refuse(
    client: GraphClient, rsps: responses.RequestsMock, url: str, state: str
) -> None:
    """A plain-http URL or a clientState outside 1..128 characters never reaches Graph."""
    with pytest.raises(ValueError):
        subs.create(client, resource="me/drive/root", notification_url=url, lifecycle_url=None,
                    client_state=state, expires_at=NOW + timedelta(days=1), now=NOW)  # fmt: skip
    assert len(rsps.calls) == 0


def test_create_is_not_retried(client: GraphClient, rsps: responses.RequestsMock) -> None:
    """A 503 on create surfaces at once (a lost answer must not leave two subscriptions)."""
    rsps.post(f"{GRAPH}/subscriptions", status=503, json={"error": {"code": "x"}})
    with pytest.raises(GraphError):
        subs.create(client, resource="me/drive/root", notification_url="https://a.example/h",
                    lifecycle_url=None, client_state="x", expires_at=NOW, now=NOW)  # fmt: skip
    assert len(rsps.calls) == 1


def test_renew_patches_the_expiry(client: GraphClient, rsps: responses.RequestsMock) -> None:
    """PATCH expirationDateTime only; the new expiry comes back typed."""
    rsps.patch(f"{GRAPH}/subscriptions/sub-1", json=_answer(expires="2027-01-02T00:00:00Z"))
    sub = subs.renew(client, "sub-1", NOW + timedelta(days=29), NOW)
    assert json.loads(rsps.calls[0].request.body).keys() == {"expirationDateTime"}
    assert sub.expires_at == datetime(2027, 1, 2, tzinfo=UTC)


def test_renew_of_an_unknown_subscription_is_gone(
    client: GraphClient, rsps: responses.RequestsMock
) -> None:
    """404 becomes SubscriptionGone (the service recreates); other errors stay GraphError."""
    rsps.patch(f"{GRAPH}/subscriptions/sub-1", status=404,
               json={"error": {"code": "ResourceNotFound", "message": "gone"}})  # fmt: skip
    with pytest.raises(subs.SubscriptionGone):
        subs.renew(client, "sub-1", NOW + timedelta(days=1), NOW)
    rsps.patch(f"{GRAPH}/subscriptions/sub-2", status=403,
               json={"error": {"code": "accessDenied", "message": "no"}})  # fmt: skip
    with pytest.raises(GraphError) as info:
        subs.renew(client, "sub-2", NOW + timedelta(days=1), NOW)
    assert not isinstance(info.value, subs.SubscriptionGone)


def test_delete_and_reauthorize(client: GraphClient, rsps: responses.RequestsMock) -> None:
    """DELETE answers True, or False when Graph no longer knew it; reauthorize POSTs."""
    rsps.delete(f"{GRAPH}/subscriptions/sub-1", status=204)
    rsps.delete(f"{GRAPH}/subscriptions/sub-2", status=404, json={"error": {"code": "x"}})
    rsps.post(f"{GRAPH}/subscriptions/sub-1/reauthorize", status=204)
    assert subs.delete(client, "sub-1") is True
    assert subs.delete(client, "sub-2") is False
    subs.reauthorize(client, "sub-1")
    assert rsps.calls[-1].request.method == "POST"


def test_resource_per_account_type() -> None:
    """Personal: the sync folder itself; business (root only, per the docs): the root."""
    assert subs.drive_resource("personal", "ABC!101") == "me/drive/items/ABC!101"
    assert subs.drive_resource("business", "01XYZ") == "me/drive/root"
    assert subs.drive_resource("personal", None) == "me/drive/root"
