"""Graph change notifications for driveItems: ``/v1.0/subscriptions`` and the deliveries.

Rules, from Microsoft's pages:

- subscription resource type (https://learn.microsoft.com/graph/api/resources/subscription):
  drive root items support only ``changeType: updated``; a driveItem subscription lives at most
  42,300 minutes ("any requests to create or renew a subscription beyond the maximum value will
  fail"); ``clientState`` is at most 128 characters; ``notificationUrl`` and
  ``lifecycleNotificationUrl`` "must make use of the HTTPS protocol"; subscriptions watch "the
  hierarchy of a root folder driveItem in OneDrive for Business, or of a root folder or
  subfolder driveItem in a user's personal OneDrive".
- change-notifications-delivery-webhooks: creating a subscription POSTs ``?validationToken=…``
  (``Content-Type: text/plain``) to the notification URL, and to the lifecycle URL too; the
  endpoint must answer 200 with the token as plain text within 10 seconds or the create fails
  (400). Notifications are POSTed with a 3-second timeout; anything but a 2xx is retried with
  exponential back-off for up to 4 hours, then dropped. A notification batch may carry several
  subscriptions' notifications in one ``value`` array.
- change-notifications-lifecycle-events: ``reauthorizationRequired``, ``subscriptionRemoved``
  and ``missed`` go to the lifecycle URL with ``lifecycleEvent`` and no resource;
  ``POST /subscriptions/{id}/reauthorize`` answers the first; a renewal also reauthorizes.
- An expired subscription is deleted: GET, PATCH and DELETE answer 404.

Deliveries leave from one background thread per emulator state, never under the state lock:
``EmulatorState.bump``/``new_item`` call :meth:`Notifier.changed`, which only records the item
and wakes the thread; the thread waits :data:`BATCH_WINDOW` to gather a burst into one POST
per URL. The thread verifies TLS against ``notify_ca`` (tests) or the system's roots.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import re
import ssl
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from flask import Blueprint, Response, jsonify, request

from .identity import get_state
from .responses import graph_error, graph_json
from .state import AccessToken, Account, EmulatorState, Item, iso, new_secret, utcnow

logger = logging.getLogger(__name__)

admin_bp = Blueprint("emulator_subscriptions_admin", __name__, url_prefix="/_emulator")

MAX_LIFETIME = timedelta(minutes=42300)
MAX_CLIENT_STATE = 128
VALIDATION_TIMEOUT = 10.0  # "within 10 seconds"
DELIVERY_TIMEOUT = 3.0  # "published using an HTTP client with a 3-second timeout"
RETRY_HORIZON = timedelta(hours=4)  # "for up to 4 hours"
LOG_LIMIT = 1000  # delivery-log entries kept
BATCH_WINDOW = 0.2  # seconds a burst of changes is gathered into one POST
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
PERSONAL_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
BUSINESS_TENANT = "00000000-0000-0000-0000-00000000b10b"
_RESOURCE = re.compile(
    r"^(?:me/drive|drives/(?P<drive>[^/]+)|users/(?P<user>[^/]+)/drive)"
    r"/(?:(?P<root>root)|items/(?P<item>[^/]+))$"
)


@dataclass
class Subscription:
    """One change-notification subscription."""

    id: str
    email: str
    client_id: str
    drive_id: str
    folder_id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires_at: datetime
    tenant_id: str
    creator_id: str
    needs_reauthorization: bool = False
    created: float = field(default_factory=time.monotonic)  # changes before it are not sent

    def json(self) -> dict[str, Any]:
        """Return the subscription as Graph shows it."""
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.client_id,
            "changeType": self.change_type,
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": iso(self.expires_at),
            "creatorId": self.creator_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    value: list[dict[str, Any]] = field(compare=False)
    first_at: float = field(compare=False)
    attempt: int = field(compare=False, default=0)
    generation: object = field(compare=False, default=None)


class Notifier:
    """The delivery thread of one emulator state (created on first use)."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = weakref.ref(state)
        self.notify_ca: str | None = None
        self.retry_base = 1.0  # seconds before the first retry; doubles each time
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[tuple[str, str], float] = {}  # (drive id, item id) -> when
        self._queue: list[_Delivery] = []
        self._seq = 0
        self.log: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="emulator-notify", daemon=True)
        self._thread.start()

    # -- called under the state lock: record and wake, nothing more ------------------------------
    def changed(self, item: Item) -> None:
        """Remember that ``item`` changed (called from ``EmulatorState.bump``/``new_item``)."""
        with self._lock:
            self._pending[(item.drive_id, item.id)] = time.monotonic()
        self._wake.set()

    def enqueue(self, url: str, value: list[dict[str, Any]], generation: object) -> None:
        """Queue one POST of ``value`` to ``url`` now."""
        now = time.monotonic()
        with self._lock:
            self._seq += 1
            heapq.heappush(self._queue, _Delivery(now, self._seq, url, value, now, 0, generation))
        self._wake.set()

    def verify(self) -> str | bool:
        """Return what to trust for notification URLs: the test CA, else the system's roots."""
        if self.notify_ca:
            return self.notify_ca
        cafile = ssl.get_default_verify_paths().cafile
        return cafile if cafile and os.path.exists(cafile) else True

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            state = self._state()
            if state is None:
                return
            with self._lock:
                wait = (self._queue[0].due - time.monotonic()) if self._queue else 1.0
            del state
            if self._wake.wait(max(0.0, min(wait, 1.0))):
                self._wake.clear()
                time.sleep(BATCH_WINDOW)  # gather the rest of a burst
            state = self._state()
            if state is None:
                return
            try:
                self._collect(state)
                self._deliver_due(state)
            except Exception:  # never let the delivery thread die
                logger.exception("emulator: notification delivery failed")

    def _collect(self, state: EmulatorState) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        by_url: dict[str, list[dict[str, Any]]] = {}
        with state.lock:
            now = utcnow()
            subs: dict[str, Subscription] = state.subscriptions
            for sub in list(subs.values()):
                if sub.expires_at <= now:
                    continue
                drive = state.drives.get(sub.drive_id.casefold())
                if drive is None:
                    continue
                if any(
                    d == drive.id and at >= sub.created and _under(drive.items, i, sub.folder_id)
                    for (d, i), at in pending.items()
                ):
                    by_url.setdefault(sub.notification_url, []).append(_notification(sub))
            generation = state.subscriptions
        for url, value in by_url.items():
            self.enqueue(url, value, generation)

    def _deliver_due(self, state: EmulatorState) -> None:
        while True:
            with self._lock:
                if not self._queue or self._queue[0].due > time.monotonic():
                    return
                job = heapq.heappop(self._queue)
            if job.generation is not state.subscriptions:
                continue  # the emulator was reset since
            status = self._post(job)
            del self.log[: max(0, len(self.log) - LOG_LIMIT + 1)]
            self.log.append(
                {"url": job.url, "attempt": job.attempt, "status": status, "value": job.value,
                 "generation": job.generation}
            )  # fmt: skip
            if status is not None and 200 <= status < 300:
                continue
            elapsed = time.monotonic() - job.first_at
            delay = self.retry_base * (2**job.attempt)
            if elapsed + delay > RETRY_HORIZON.total_seconds():
                continue  # "it discards the change notification"
            with self._lock:
                self._seq += 1
                heapq.heappush(
                    self._queue,
                    _Delivery(time.monotonic() + delay, self._seq, job.url, job.value,
                              job.first_at, job.attempt + 1, job.generation),
                )  # fmt: skip

    def _post(self, job: _Delivery) -> int | None:
        try:
            with requests.Session() as http:
                http.trust_env = False  # no proxy: notification URLs are reached directly
                resp = http.post(
                    job.url,
                    data=json.dumps({"value": job.value}),
                    headers={
                        "Content-Type": "application/json; charset=utf-8",
                        "Connection": "close",
                    },
                    timeout=DELIVERY_TIMEOUT,
                    verify=self.verify(),
                    allow_redirects=False,
                )
                resp.close()
                return resp.status_code
        except requests.RequestException as exc:
            logger.info("emulator: notification to %s failed: %s", job.url, type(exc).__name__)
            return None


_notifiers: weakref.WeakKeyDictionary[EmulatorState, Notifier] = weakref.WeakKeyDictionary()
_notifiers_lock = threading.Lock()


def notifier(state: EmulatorState) -> Notifier:
    """Return the state's notifier, starting it (and hooking it into the state) on first use."""
    with _notifiers_lock:
        found = _notifiers.get(state)
        if found is None:
            found = _notifiers[state] = Notifier(state)
            state.change_hooks.append(found.changed)
        return found


def configure(state: EmulatorState, *, notify_ca: str | None = None) -> Notifier:
    """Trust ``notify_ca`` (a PEM file) for notification URLs instead of the system's roots."""
    found = notifier(state)
    found.notify_ca = notify_ca
    return found


def _within(items: dict[str, Item], item_id: str | None, folder_id: str) -> bool:
    """Return whether ``item_id`` is ``folder_id`` or lies below it (deleted items included)."""
    seen = 0
    cur = items.get(item_id) if item_id else None
    while cur is not None and seen < 10_000:
        if cur.id == folder_id:
            return True
        cur = items.get(cur.parent_id) if cur.parent_id else None
        seen += 1
    return False


def _under(items: dict[str, Item], item_id: str, folder_id: str) -> bool:
    """Return whether the changed item is, or was, inside ``folder_id``: an item moved out of
    the watched folder changed that folder's content too."""
    if _within(items, item_id, folder_id):
        return True
    item = items.get(item_id)
    earlier = [parent for _seq, parent in item.parents] if item is not None else []
    return any(_within(items, parent, folder_id) for parent in earlier)


def _notification(sub: Subscription) -> dict[str, Any]:
    return {
        "subscriptionId": sub.id,
        "clientState": sub.client_state,
        "changeType": "updated",
        "resource": sub.resource,
        "subscriptionExpirationDateTime": iso(sub.expires_at),
        "tenantId": sub.tenant_id,
    }


def lifecycle_notification(sub: Subscription, event: str) -> dict[str, Any]:
    """Return a lifecycle notification (no resource: it is about the subscription)."""
    return {
        "subscriptionId": sub.id,
        "subscriptionExpirationDateTime": iso(sub.expires_at),
        "tenantId": sub.tenant_id,
        "clientState": sub.client_state,
        "lifecycleEvent": event,
    }


# -- Graph API ------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _subs(state: EmulatorState) -> dict[str, Subscription]:
    return state.subscriptions


def _live(state: EmulatorState, token: AccessToken, sub_id: str) -> Subscription:
    """Return the caller's live subscription or raise 404 (expired ones are deleted)."""
    with state.lock:
        sub = _subs(state).get(sub_id)
        if sub is not None and sub.expires_at <= utcnow():
            del _subs(state)[sub_id]
            sub = None
    if sub is None or sub.email != token.email or sub.client_id != token.client_id:
        raise _Refused(404, "ResourceNotFound", f"The object '{sub_id}' doesn't exist.")
    return sub


def _parse_expiry(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise _Refused(400, "InvalidRequest", "expirationDateTime is required.")
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits) :]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _Refused(400, "InvalidRequest", "expirationDateTime is not a valid date.") from None
    if parsed.tzinfo is None:
        raise _Refused(400, "InvalidRequest", "expirationDateTime must carry a time zone.")
    now = utcnow()
    if parsed <= now:
        raise _Refused(400, "InvalidRequest", "Subscription expiration must be in the future.")
    if parsed > now + MAX_LIFETIME:
        raise _Refused(
            400,
            "InvalidRequest",
            "Subscription expiration can only be 42300 minutes in the future.",
        )
    return parsed


def _https(value: Any, name: str) -> str:
    if (
        not isinstance(value, str)
        or urlsplit(value).scheme != "https"
        or not urlsplit(value).netloc
    ):
        raise _Refused(400, "InvalidRequest", f"The {name} must use the HTTPS protocol.")
    return value


def _resource(state: EmulatorState, account: Account, value: Any) -> tuple[str, str, str]:
    """Return (resource as given, drive id, folder item id) or refuse it."""
    if not isinstance(value, str) or not value:
        raise _Refused(400, "InvalidRequest", "resource is required.")
    resource = value.strip()
    match = _RESOURCE.match(resource.lstrip("/"))
    unsupported = _Refused(400, "InvalidRequest", f"resource '{resource}' is not supported.")
    if not match:
        raise unsupported
    with state.lock:
        drive = state.drive_of(account)
        if match["drive"] and match["drive"].casefold() != drive.id.casefold():
            raise _Refused(403, "accessDenied", "Access denied")
        user = match["user"]
        if user and user.casefold() not in (account.user_id.casefold(), account.email):
            raise _Refused(403, "accessDenied", "Access denied")
        if match["root"]:
            return resource, drive.id, drive.root_id
        item = drive.items.get(match["item"] or "")
        if item is None or item.deleted:
            raise _Refused(404, "itemNotFound", "The resource could not be found.")
        if item.id == drive.root_id:
            return resource, drive.id, item.id
        # Business drives: "a root folder driveItem" only; personal: root or a subfolder.
        if drive.drive_type != "personal" or not item.is_folder:
            raise unsupported
        return resource, drive.id, item.id


def _validate_url(url: str, verify: str | bool) -> bool:
    """Do Graph's validation request: POST ?validationToken=…, expect 200 + the token."""
    token = f"Validation: {new_secret(24)}"
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    target = urlunsplit(parts._replace(query=query + urlencode({"validationToken": token})))
    try:
        with requests.Session() as http:
            http.trust_env = False
            resp = http.post(
                target,
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8", "Connection": "close"},
                timeout=VALIDATION_TIMEOUT,
                verify=verify,
                allow_redirects=False,
            )
    except requests.RequestException as exc:
        logger.info("emulator: validation of %s failed: %s", url, type(exc).__name__)
        return False
    # "A status code of HTTP 200 OK. A content type of text/plain. A body that includes the
    # URL decoded plain text validation token."
    plain = resp.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/plain"
    return resp.status_code == 200 and plain and resp.text == token


def _validation_failed(url: str) -> _Refused:
    return _Refused(
        400,
        "InvalidRequest",
        f"Subscription validation request failed. Notification endpoint must respond with 200 "
        f"OK to validation request. ({url})",
    )


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise _Refused(400, "BadRequest", "Empty Payload, JSON content expected")
    return data


def handle(state: EmulatorState, token: AccessToken, account: Account, rest: str) -> Response:
    """Serve ``/v1.0/subscriptions[/{id}[/reauthorize]]`` (called by graph.py's dispatcher)."""
    try:
        return _handle(state, token, account, rest)
    except _Refused as r:
        return graph_error(r.status, r.code, r.message)


def _handle(state: EmulatorState, token: AccessToken, account: Account, rest: str) -> Response:
    parts = rest.split("/")
    method = request.method
    if len(parts) == 1:
        if method == "POST":
            return _create(state, token, account)
        if method == "GET":
            now = utcnow()
            with state.lock:
                mine = [
                    s.json() for s in _subs(state).values()
                    if s.email == token.email and s.client_id == token.client_id
                    and s.expires_at > now
                ]  # fmt: skip
            return graph_json({"@odata.context": "$metadata#subscriptions", "value": mine})
        raise _Refused(405, "Request_BadRequest", "Method not allowed.")
    sub = _live(state, token, parts[1])
    if len(parts) == 3 and parts[2] == "reauthorize" and method == "POST":
        sub.needs_reauthorization = False
        return Response(status=204)
    if len(parts) != 2:
        raise _Refused(400, "BadRequest", "Unsupported segment.")
    if method == "GET":
        return graph_json(sub.json())
    if method == "DELETE":
        with state.lock:
            _subs(state).pop(sub.id, None)
        return Response(status=204)
    if method == "PATCH":
        return _update(state, sub)
    raise _Refused(405, "Request_BadRequest", "Method not allowed.")


def _create(state: EmulatorState, token: AccessToken, account: Account) -> Response:
    body = _body()
    change_type = body.get("changeType")
    if not isinstance(change_type, str) or not change_type:
        raise _Refused(400, "InvalidRequest", "changeType is required.")
    if {c.strip() for c in change_type.split(",")} != {"updated"}:
        raise _Refused(
            400, "InvalidRequest", f"ChangeType '{change_type}' is not supported for driveItem."
        )
    notification_url = _https(body.get("notificationUrl"), "notificationUrl")
    lifecycle_url = body.get("lifecycleNotificationUrl")
    if lifecycle_url is not None:
        lifecycle_url = _https(lifecycle_url, "lifecycleNotificationUrl")
    client_state = body.get("clientState")
    if client_state is not None and (
        not isinstance(client_state, str) or len(client_state) > MAX_CLIENT_STATE
    ):
        raise _Refused(400, "InvalidRequest", "clientState can be at most 128 characters.")
    if body.get("includeResourceData"):
        raise _Refused(400, "InvalidRequest", "includeResourceData is not supported for driveItem.")
    expires_at = _parse_expiry(body.get("expirationDateTime"))
    resource, drive_id, folder_id = _resource(state, account, body.get("resource"))
    verify = notifier(state).verify()
    # Outside the state lock: the endpoint may take up to 10 s (or call us back).
    for url in [notification_url] + ([lifecycle_url] if lifecycle_url else []):
        if not _validate_url(url, verify):
            raise _validation_failed(url)
    sub = Subscription(
        id=str(uuid.uuid4()),
        email=token.email,
        client_id=token.client_id,
        drive_id=drive_id,
        folder_id=folder_id,
        resource=resource,
        change_type="updated",
        notification_url=notification_url,
        lifecycle_url=lifecycle_url,
        client_state=client_state,
        expires_at=expires_at,
        tenant_id=PERSONAL_TENANT if account.drive_type == "personal" else BUSINESS_TENANT,
        creator_id=account.user_id,
    )
    with state.lock:
        _subs(state)[sub.id] = sub
    return graph_json(sub.json(), 201)


def _update(state: EmulatorState, sub: Subscription) -> Response:
    body = _body()
    allowed = {"expirationDateTime", "notificationUrl"}
    if not body or set(body) - allowed:
        raise _Refused(
            400, "InvalidRequest", "Only expirationDateTime and notificationUrl can be updated."
        )
    expires_at = _parse_expiry(body["expirationDateTime"]) if "expirationDateTime" in body else None
    url = _https(body["notificationUrl"], "notificationUrl") if "notificationUrl" in body else None
    if url and url != sub.notification_url and not _validate_url(url, notifier(state).verify()):
        raise _validation_failed(url)
    with state.lock:
        if expires_at is not None:
            sub.expires_at = expires_at
            sub.needs_reauthorization = False  # "renewing your subscription also reauthorizes"
        if url:
            sub.notification_url = url
    return graph_json(sub.json())


# -- admin API ------------------------------------------------------------------------------------


def _admin_sub(state: EmulatorState, sub_id: str) -> Subscription | None:
    with state.lock:
        return _subs(state).get(sub_id)


def _bad(message: str, status: int) -> Response:
    resp = jsonify({"error": message})
    resp.status_code = status
    return resp


@admin_bp.get("/subscriptions")
def admin_list() -> Response:
    """Every subscription, expired ones included, with its owner and clientState."""
    state = get_state()
    now = utcnow()
    with state.lock:
        out = [
            {**s.json(), "email": s.email, "expired": s.expires_at <= now,
             "needsReauthorization": s.needs_reauthorization}
            for s in _subs(state).values()
        ]  # fmt: skip
    return jsonify(out)


@admin_bp.post("/subscriptions/<sub_id>/lifecycle")
def admin_lifecycle(sub_id: str) -> Response:
    """Send a lifecycle event (``event``) to the subscription's lifecycle URL."""
    state = get_state()
    data = request.get_json(silent=True) or {}
    event = data.get("event") if isinstance(data, dict) else None
    if event not in LIFECYCLE_EVENTS:
        return _bad(f"event must be one of {', '.join(LIFECYCLE_EVENTS)}", 400)
    sub = _admin_sub(state, sub_id)
    if sub is None:
        return _bad(f"unknown subscription {sub_id}", 404)
    if not sub.lifecycle_url:
        return _bad("the subscription has no lifecycleNotificationUrl", 409)
    with state.lock:
        if event == "reauthorizationRequired":
            sub.needs_reauthorization = True
        if event == "subscriptionRemoved":
            _subs(state).pop(sub.id, None)
        generation = state.subscriptions
    notifier(state).enqueue(sub.lifecycle_url, [lifecycle_notification(sub, event)], generation)
    resp = jsonify({"queued": True})
    resp.status_code = 202
    return resp


@admin_bp.post("/subscriptions/<sub_id>/expire")
def admin_expire(sub_id: str) -> Response:
    """Expire the subscription now (it answers 404 from then on)."""
    state = get_state()
    sub = _admin_sub(state, sub_id)
    if sub is None:
        return _bad(f"unknown subscription {sub_id}", 404)
    with state.lock:
        sub.expires_at = utcnow() - timedelta(seconds=1)
    return jsonify({"expired": True})


@admin_bp.delete("/subscriptions/<sub_id>")
def admin_delete(sub_id: str) -> Response:
    """Remove the subscription on the server's side, silently."""
    state = get_state()
    with state.lock:
        found = _subs(state).pop(sub_id, None)
    if found is None:
        return _bad(f"unknown subscription {sub_id}", 404)
    return jsonify({"deleted": True})


@admin_bp.get("/notifications")
def admin_notifications() -> Response:
    """The delivery log since the last reset: url, attempt, status (null = no answer), value."""
    state = get_state()
    entries = [e for e in notifier(state).log if e["generation"] is state.subscriptions]
    return jsonify([{k: v for k, v in e.items() if k != "generation"} for e in entries])


@admin_bp.delete("/notifications")
def admin_clear_notifications() -> Response:
    """Clear the delivery log."""
    notifier(get_state()).log.clear()
    return jsonify({"cleared": True})


@admin_bp.put("/notifications/retry-base")
def admin_retry_base() -> Response:
    """Set the first retry delay in seconds (``seconds``; default 1, doubling each time)."""
    data = request.get_json(silent=True) or {}
    seconds = data.get("seconds") if isinstance(data, dict) else None
    if not isinstance(seconds, int | float) or not 0.05 <= seconds <= 3600:
        return _bad("seconds must be between 0.05 and 3600", 400)
    notifier(get_state()).retry_base = float(seconds)
    return jsonify({"seconds": float(seconds)})
