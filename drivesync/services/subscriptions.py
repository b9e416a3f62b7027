"""Graph change notifications for the user's drive: subscribe, renew, recreate, remove, receive.

When ``DRIVESYNC_PUBLIC_URL`` is https (and ``DRIVESYNC_WEBHOOKS`` is not ``off``), each active
connection holds one subscription (``graph_subscriptions``) whose notifications land on
``/hooks/onedrive`` (lifecycle events on ``/hooks/onedrive/lifecycle``):

- :func:`ensure` (connect, and the scheduler when none is live) creates it: resource per
  account type (:func:`drivesync.graph.subscriptions.drive_resource`), ``changeType: updated``,
  the driveItem maximum lifetime (42,300 minutes) less :data:`EXPIRY_MARGIN`, and a random
  ``clientState`` stored encrypted by the vault, bound to its row (integration and subscription
  id) and column, like the OAuth tokens. The clientState is never logged or returned.
- :func:`maintain` (the scheduler's reconcile) renews at ``renew_at`` (:data:`RENEW_AHEAD`
  before expiry), recreates a subscription Graph answers 404 for, and creates a missing one.
- :func:`remove` (disconnect) deletes it on Graph (best effort) and drops the row.
- :func:`receive` (the notification endpoint) finds each notification's owner (PostgreSQL:
  the ``drivesync_subscription_owner`` SECURITY DEFINER function; RLS hides every row without
  a user), then, inside that user's scope, compares ``clientState`` in constant time. A valid
  change asks for one delta check (:func:`changes.request_check`, coalesced); lifecycle events
  are handled per https://learn.microsoft.com/graph/change-notifications-lifecycle-events:
  ``reauthorizationRequired`` and ``subscriptionRemoved`` make the renewal due now (a renewal
  also reauthorizes; a removed subscription answers 404 and is recreated), ``missed`` asks for
  a delta check. Nothing here calls Graph inline for a notification: the scheduler does.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import undefer

from .. import tasks
from ..extensions import db
from ..graph import subscriptions as graph_subscriptions
from ..graph.errors import GraphError
from ..models import GraphSubscription, Integration, utcnow
from ..scope import user_scope
from ..vault import VaultError
from . import changes, integrations
from .errors import ServiceError
from .transfer import changed

logger = logging.getLogger(__name__)

NOTIFY_PATH = "/hooks/onedrive"
LIFECYCLE_PATH = "/hooks/onedrive/lifecycle"
# Ask for less than the documented maximum: our clock and Graph's differ a little, and "any
# requests to create or renew a subscription beyond the maximum value will fail".
EXPIRY_MARGIN = timedelta(hours=1)
LIFETIME = graph_subscriptions.MAX_DRIVEITEM_LIFETIME - EXPIRY_MARGIN
RENEW_AHEAD = timedelta(days=3)  # renew three days before expiry: room for a few failed tries
RETRY_AFTER = timedelta(minutes=30)  # a failed renewal is tried again this much later
CLIENT_STATE_BYTES = 48  # 64 URL-safe characters; Graph allows up to 128
# Bounded work per request: the endpoint reads at most 256 KiB (about a thousand notifications);
# identical ones (same subscription, clientState and event) are handled once.
MAX_NOTIFICATIONS = 1000


def enabled() -> bool:
    """Return whether change notifications are configured (an https public URL, not off)."""
    cfg = current_app.config
    if cfg.get("WEBHOOKS", "auto") == "off":
        return False
    return str(cfg.get("PUBLIC_URL") or "").startswith("https://")


def notification_url() -> str:
    """Return the URL Graph posts change notifications to."""
    return str(current_app.config["PUBLIC_URL"]).rstrip("/") + NOTIFY_PATH


def lifecycle_url() -> str:
    """Return the URL Graph posts lifecycle notifications to."""
    return str(current_app.config["PUBLIC_URL"]).rstrip("/") + LIFECYCLE_PATH


def _context(integration_id: int, subscription_id: str) -> str:
    return f"graph_subscriptions:{integration_id}:{subscription_id}:client_state"


def _row(user_id: int) -> GraphSubscription | None:
    return db.session.execute(
        db.select(GraphSubscription).where(GraphSubscription.user_id == user_id)
    ).scalar_one_or_none()


def live(user_id: int, now: datetime | None = None) -> bool:
    """Return whether the user's connection has an unexpired subscription."""
    return changes.live_subscription(user_id, now)


# -- create, renew, remove -----------------------------------------------------------------------


def _active(user_id: int) -> Integration | None:
    integration = integrations.get_integration(user_id)
    return integration if integration is not None and integration.active else None


def ensure(user_id: int, now: datetime | None = None) -> bool:
    """Create the user's subscription unless one is live; return whether one is live after.

    Never raises for Graph or network trouble: the failure is logged and the scheduler tries
    again on a later reconcile. Commits.
    """
    now = now or utcnow()
    integration = _active(user_id) if enabled() else None
    if integration is None:
        return False
    row = _row(user_id)
    if row is not None:
        if row.expires_at > now and not _outdated(row, integration):
            return True
        if row.expires_at > now:
            # Reconnected to another folder, or the public URL moved: subscribe afresh.
            logger.info("subscriptions: %s no longer matches the connection", row.subscription_id)
            remove(user_id)
        else:
            _drop(row)  # Graph has forgotten an expired subscription; so do we
    try:
        return _create(user_id, now)
    except Exception as exc:  # never breaks connecting or a reconcile; the next one retries
        db.session.rollback()
        logger.warning("subscriptions: could not subscribe user %s: %s", user_id, _describe(exc))
        return False


def _outdated(row: GraphSubscription, integration: Integration) -> bool:
    """Return whether the row watches another resource or notifies another URL than now."""
    resource = graph_subscriptions.drive_resource(integration.drive_type, integration.folder_id)
    return row.resource != resource or row.notification_url != notification_url()


def _describe(exc: BaseException) -> str:
    # GraphError's text is already redacted; a clientState is never part of any message here.
    return str(exc) if isinstance(exc, GraphError) else type(exc).__name__


def _create(user_id: int, now: datetime) -> bool:
    client, integration = integrations.graph_client_for(user_id)
    client_state = secrets.token_urlsafe(CLIENT_STATE_BYTES)
    resource = graph_subscriptions.drive_resource(integration.drive_type, integration.folder_id)
    try:
        sub = graph_subscriptions.create(
            client,
            resource=resource,
            notification_url=notification_url(),
            lifecycle_url=lifecycle_url(),
            client_state=client_state,
            expires_at=now + LIFETIME,
            now=now,
        )
        row = GraphSubscription(
            user_id=user_id,
            integration_id=integration.id,
            subscription_id=sub.id,
            resource=resource,  # as asked: compared with the connection's on every upkeep
            notification_url=notification_url(),
            key_id=integrations.vault().current_key_id,
            client_state_encrypted=integrations.vault().encrypt(
                client_state, _context(integration.id, sub.id)
            ),
            expires_at=sub.expires_at,
            renew_at=sub.expires_at - RENEW_AHEAD,
            created_at=now,
        )
        db.session.add(row)
        try:
            db.session.commit()
        except IntegrityError:
            # Another worker subscribed this connection first: keep theirs, drop ours.
            db.session.rollback()
            _delete_remote(client, sub.id)
            return live(user_id, now)
        logger.info("subscriptions: user %s subscribed until %s", user_id, sub.expires_at)
        return True
    finally:
        client.close()


def _delete_remote(client: Any, subscription_id: str) -> None:
    try:
        graph_subscriptions.delete(client, subscription_id)
    except GraphError as exc:
        logger.info("subscriptions: could not delete %s on Graph: %s", subscription_id, exc)


def _drop(row: GraphSubscription) -> None:
    db.session.execute(
        delete(GraphSubscription)
        .where(GraphSubscription.id == row.id, GraphSubscription.user_id == row.user_id)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    db.session.expire_all()


def maintain(user_id: int, now: datetime | None = None) -> None:
    """Renew when due, recreate when Graph answers 404, create when missing (scheduler; commits).

    With webhooks switched off, a leftover subscription is removed.
    """
    now = now or utcnow()
    row = _row(user_id)
    if not enabled():
        if row is not None:
            remove(user_id)
        return
    integration = _active(user_id)
    if integration is None:
        return
    if row is None or row.expires_at <= now or _outdated(row, integration):
        ensure(user_id, now)
        return
    if row.renew_at is not None and row.renew_at > now:
        return
    _renew(user_id, row, now)


def _renew(user_id: int, row: GraphSubscription, now: datetime) -> None:
    sub_id, row_id = row.subscription_id, row.id
    try:
        client, _integration = integrations.graph_client_for(user_id)
    except ServiceError as exc:
        logger.info("subscriptions: cannot renew for user %s: %s", user_id, exc)
        return
    try:
        sub = graph_subscriptions.renew(client, sub_id, now + LIFETIME, now)
    except graph_subscriptions.SubscriptionGone:
        logger.info("subscriptions: %s is gone on Graph; subscribing again", sub_id)
        db.session.rollback()
        _drop(row)
        ensure(user_id, now)
        return
    except GraphError as exc:
        db.session.rollback()
        logger.warning("subscriptions: renewing %s for user %s failed: %s", sub_id, user_id, exc)
        changed(
            update(GraphSubscription)
            .where(GraphSubscription.id == row_id, GraphSubscription.subscription_id == sub_id)
            .values(error=str(exc)[:500], renew_at=now + RETRY_AFTER)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        return
    finally:
        client.close()
    moved = changed(
        update(GraphSubscription)
        .where(GraphSubscription.id == row_id, GraphSubscription.subscription_id == sub_id)
        .values(
            expires_at=sub.expires_at,
            renew_at=sub.expires_at - RENEW_AHEAD,
            renewed_at=now,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    if moved:
        logger.info("subscriptions: %s renewed until %s", sub_id, sub.expires_at)


def remove(user_id: int) -> bool:
    """Delete the user's subscription on Graph (best effort) and drop its row; commits.

    Called before disconnecting (the row would cascade away with the integration, and the
    Graph side would go on notifying until it expired). Return whether there was one.
    """
    row = _row(user_id)
    if row is None:
        return False
    sub_id = row.subscription_id
    try:
        client, _integration = integrations.graph_client_for(user_id)
    except ServiceError:
        client = None  # not connected any more: Graph drops it when it expires
    if client is not None:
        try:
            _delete_remote(client, sub_id)
        except Exception:  # best effort: never let Graph stop a disconnect
            logger.warning("subscriptions: deleting %s on Graph failed", sub_id)
        finally:
            client.close()
    _drop(row)
    return True


# -- receiving -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """What one notification batch did (for logs and tests; never sent to the caller)."""

    accepted: int = 0
    refused: int = 0


def owner_of(subscription_id: str) -> int | None:
    """Return the user owning ``subscription_id`` (no user is signed in for a notification)."""
    if db.session.get_bind().dialect.name == "postgresql":
        value = db.session.execute(
            text("SELECT drivesync_subscription_owner(:s)"), {"s": subscription_id}
        ).scalar()
    else:
        value = db.session.execute(
            db.select(GraphSubscription.user_id).where(
                GraphSubscription.subscription_id == subscription_id
            )
        ).scalar()
    return int(value) if value is not None else None


def _client_state_matches(user_id: int, subscription_id: str, presented: str) -> bool:
    row = db.session.execute(
        db.select(GraphSubscription)
        .where(
            GraphSubscription.user_id == user_id,
            GraphSubscription.subscription_id == subscription_id,
        )
        .options(undefer(GraphSubscription.client_state_encrypted))
    ).scalar_one_or_none()
    if row is None:
        return False
    try:
        expected = integrations.vault().decrypt(
            row.client_state_encrypted, _context(row.integration_id, row.subscription_id)
        )
    except VaultError:
        logger.error("subscriptions: the clientState of %s cannot be decrypted", subscription_id)
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def receive(notifications: list[Any], now: datetime | None = None) -> Received:
    """Act on a batch of change or lifecycle notifications (the endpoint has answered nothing
    yet; it answers the same whatever this finds). Commits per notification."""
    now = now or utcnow()
    accepted = refused = 0
    seen: set[tuple[str, str, Any]] = set()
    for item in notifications[:MAX_NOTIFICATIONS]:
        if not isinstance(item, dict):
            refused += 1
            continue
        sub_id, state = item.get("subscriptionId"), item.get("clientState")
        if not isinstance(sub_id, str) or not isinstance(state, str) or not 0 < len(sub_id) <= 128:
            refused += 1
            continue
        event = item.get("lifecycleEvent")
        key = (sub_id, state, event if isinstance(event, str) else None)
        if key in seen:
            continue  # a duplicate in the same batch: already handled (or refused) above
        seen.add(key)
        owner = owner_of(sub_id)
        db.session.rollback()  # end the unscoped transaction before working as the owner
        if owner is None:
            refused += 1
            continue
        with user_scope(owner):
            try:
                if not _client_state_matches(owner, sub_id, state):
                    refused += 1
                    logger.warning("subscriptions: notification for %s refused", sub_id)
                    continue
                _act(owner, sub_id, key[2], now)
                accepted += 1
            finally:
                db.session.rollback()
    return Received(accepted, refused)


def _act(user_id: int, subscription_id: str, lifecycle: Any, now: datetime) -> None:
    where = (
        GraphSubscription.user_id == user_id,
        GraphSubscription.subscription_id == subscription_id,
    )
    if lifecycle in ("reauthorizationRequired", "subscriptionRemoved"):
        changed(
            update(GraphSubscription)
            .where(*where)
            .values(renew_at=now)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        logger.info("subscriptions: %s for %s; renewing now", lifecycle, subscription_id)
        try:
            tasks.wake_user(user_id, 0)
        except Exception:  # renew_at is stored: the next tick renews
            logger.warning("subscriptions: could not wake the scheduler for user %s", user_id)
        if lifecycle == "subscriptionRemoved":
            # Changes between the removal and the new subscription arrive by no notification.
            changes.request_check(user_id, now, min_gap=timedelta(0))
        return
    changed(
        update(GraphSubscription)
        .where(*where)
        .values(last_notified_at=now)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    # A change notification, or ``missed``: either way one delta check, coalesced.
    changes.request_check(user_id, now, min_gap=timedelta(0))
