"""Microsoft Graph change-notification subscriptions: create, renew, reauthorize, delete.

No Flask, no database: the caller hands in a :class:`~drivesync.graph.client.GraphClient` and
gets a typed :class:`Subscription` back. The rules this module follows (all from Microsoft's
pages, cited where they matter):

- subscription resource type
  (https://learn.microsoft.com/graph/api/resources/subscription): driveItem subscriptions
  support only ``changeType: updated``; their maximum lifetime is 42,300 minutes ("under 30
  days"), and "any requests to create or renew a subscription beyond the maximum value will
  fail"; ``clientState`` is at most 128 characters; ``notificationUrl`` and
  ``lifecycleNotificationUrl`` must be HTTPS. OneDrive for Business accepts only the root
  folder; a personal OneDrive accepts the root folder or a subfolder.
- change-notifications-delivery-webhooks: creating a subscription makes Graph POST a
  ``validationToken`` to the notification URL; the subscription exists only if the endpoint
  answers it (``201 Created`` otherwise a 400). Renewal is ``PATCH expirationDateTime``;
  deletion answers ``204``.
- change-notifications-lifecycle-events: ``POST /subscriptions/{id}/reauthorize`` answers a
  ``reauthorizationRequired`` without extending the expiry; a renewal also reauthorizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from drivesync.graph.client import GraphClient
from drivesync.graph.errors import GraphError

# https://learn.microsoft.com/graph/api/resources/subscription#maximum-length-of-subscription-per-resource-type
MAX_DRIVEITEM_LIFETIME = timedelta(minutes=42300)
MAX_CLIENT_STATE = 128
CHANGE_TYPE = "updated"  # "Drive root item ... change notifications support only updated"


@dataclass(frozen=True)
class Subscription:
    """A subscription as Graph answered it (never the clientState: the caller has it)."""

    id: str
    resource: str
    expires_at: datetime
    notification_url: str


class SubscriptionGone(GraphError):
    """Graph no longer knows the subscription (404): it expired or was removed."""


def drive_resource(drive_type: str | None, folder_id: str | None) -> str:
    """Return the resource to subscribe to for a drive of ``drive_type``.

    OneDrive for Business (and SharePoint document libraries) accept only the drive's root; a
    personal OneDrive accepts the root folder or a subfolder, so there the sync folder itself is
    watched and notifications about the rest of the drive never arrive.
    """
    if drive_type == "personal" and folder_id:
        return f"me/drive/items/{quote(folder_id, safe='!')}"
    return "me/drive/root"


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise GraphError("subscription without expirationDateTime", code="badResponse")
    text = value.replace("Z", "+00:00")
    # Graph writes up to seven fractional digits; Python's parser takes at most six.
    head, dot, rest = text.partition(".")
    if dot:
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        tail = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tail}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _subscription(body: dict[str, Any]) -> Subscription:
    sub_id = body.get("id")
    if not isinstance(sub_id, str) or not sub_id:
        raise GraphError("subscription without id", code="badResponse")
    return Subscription(
        id=sub_id,
        resource=str(body.get("resource") or ""),
        expires_at=_parse_time(body.get("expirationDateTime")),
        notification_url=str(body.get("notificationUrl") or ""),
    )


def _check_https(url: str, what: str) -> None:
    if urlsplit(url).scheme != "https":
        raise ValueError(f"{what} must be an https:// URL")


def _gone(exc: GraphError) -> GraphError:
    if exc.status == 404:
        return SubscriptionGone(exc.message, status=404, code=exc.code, request_id=exc.request_id)
    return exc


def _path(subscription_id: str) -> str:
    return f"subscriptions/{quote(subscription_id, safe='')}"


def clamp_expiry(now: datetime, wanted: datetime) -> datetime:
    """Return ``wanted`` capped at the driveItem maximum counted from ``now``."""
    return min(wanted, now + MAX_DRIVEITEM_LIFETIME)


def create(
    client: GraphClient,
    *,
    resource: str,
    notification_url: str,
    lifecycle_url: str | None,
    client_state: str,
    expires_at: datetime,
    now: datetime | None = None,
) -> Subscription:
    """Create a subscription to ``resource``; raise ``GraphError`` when Graph refuses it.

    Graph validates the notification URL (and the lifecycle URL) before answering, so this
    call takes as long as that handshake (up to 10 s per URL).
    """
    _check_https(notification_url, "notificationUrl")
    if lifecycle_url:
        _check_https(lifecycle_url, "lifecycleNotificationUrl")
    if not client_state or len(client_state) > MAX_CLIENT_STATE:
        raise ValueError("clientState must be 1 to 128 characters")
    now = now or datetime.now(UTC)
    body: dict[str, Any] = {
        "changeType": CHANGE_TYPE,
        "notificationUrl": notification_url,
        "resource": resource,
        "expirationDateTime": _iso(clamp_expiry(now, expires_at)),
        "clientState": client_state,
    }
    if lifecycle_url:
        body["lifecycleNotificationUrl"] = lifecycle_url
    # Not retried: a create whose answer was lost would leave a second subscription behind;
    # the scheduler tries again on a later reconcile instead.
    resp = client.request("POST", "subscriptions", json=body, retry=False)
    try:
        return _subscription(resp.json())
    finally:
        resp.close()


def renew(
    client: GraphClient, subscription_id: str, expires_at: datetime, now: datetime | None = None
) -> Subscription:
    """Move the subscription's expiry to ``expires_at``; ``SubscriptionGone`` when it is gone."""
    now = now or datetime.now(UTC)
    body = {"expirationDateTime": _iso(clamp_expiry(now, expires_at))}
    try:
        resp = client.request("PATCH", _path(subscription_id), json=body)
    except GraphError as exc:
        raise _gone(exc) from None
    try:
        return _subscription(resp.json())
    finally:
        resp.close()


def reauthorize(client: GraphClient, subscription_id: str) -> None:
    """Answer a ``reauthorizationRequired`` challenge without changing the expiry."""
    try:
        resp = client.request("POST", _path(subscription_id) + "/reauthorize")
    except GraphError as exc:
        raise _gone(exc) from None
    resp.close()


def delete(client: GraphClient, subscription_id: str) -> bool:
    """Delete the subscription; return False when Graph no longer knew it (404)."""
    try:
        resp = client.request("DELETE", _path(subscription_id))
    except GraphError as exc:
        if exc.status == 404:
            return False
        raise
    resp.close()
    return True
