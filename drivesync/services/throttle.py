"""Sign-in throttling that slows guessing without letting anyone lock the owner out.

Counters live in flask-limiter's storage (Redis in production, so every worker and host shares
them). For one sign-in attempt at account A from address X:

- X may make ``LOGIN_RATE_LIMIT`` attempts, whatever the accounts (password spraying);
- a browser that has signed in to A before carries a signed *device cookie* (OWASP's "device
  cookies" defence); it gets its own ``LOGIN_RATE_LIMIT`` budget for A and is never held back by
  what strangers do, so the owner cannot be locked out from their own browser;
- every other client shares one budget of ``LOGIN_RATE_LIMIT`` *failed* attempts at A, across
  all addresses (a botnet); once spent, untrusted clients are refused without the password being
  checked until the window passes, and the owner can still get in from a known browser or
  through a password reset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer
from limits import parse

from ..extensions import limiter
from .errors import ServiceError

DEVICE_COOKIE = "drivesync_device"


class Throttled(ServiceError):
    """Too many attempts; ``retry_after`` says how many seconds to wait."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Attempt:
    """Who is trying to sign in: the address, the e-mail as typed (normalised) and the device
    nonce of a valid device cookie for that account. Budgets are keyed by the e-mail, not the
    account, so an unknown address is throttled exactly like a real one (no enumeration)."""

    address: str
    email: str
    device: str | None


def _enabled() -> bool:
    return bool(limiter.enabled and current_app.config.get("RATELIMIT_ENABLED", True))


def _retry_after(limit: str, *key: str) -> int:
    reset, _remaining = limiter.limiter.get_window_stats(parse(limit), *_key(*key))
    return max(1, int(reset - time.time()))


def _key(*parts: str) -> tuple[str, ...]:
    """Namespace a counter key like flask-limiter's own (several apps may share one Redis)."""
    return (current_app.config.get("RATELIMIT_KEY_PREFIX") or "drivesync", *parts)


def hit(limit: str, message: str, *key: str) -> None:
    """Count one event against ``limit`` for ``key``; raise ``Throttled`` once it is spent."""
    if _enabled() and not limiter.limiter.hit(parse(limit), *_key(*key)):
        raise Throttled(message, _retry_after(limit, *key))


def _device_serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="drivesync-device")


def device_cookie_for(user_id: int, nonce: str) -> str:
    """Return a signed device cookie value naming the account it signed in to."""
    return str(_device_serializer().dumps({"u": user_id, "n": nonce}))


def device_of(cookie: str | None, user_id: int | None) -> str | None:
    """Return the device nonce of a cookie issued for ``user_id``, else ``None``."""
    if not cookie or user_id is None:
        return None
    try:
        data = _device_serializer().loads(cookie)
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("u") != user_id or not data.get("n"):
        return None
    return str(data["n"])


TOO_MANY = "Too many sign-in attempts. Wait a minute and try again, or reset your password."


def before_sign_in(attempt: Attempt) -> None:
    """Refuse an attempt that is over a limit (before the password is checked)."""
    if not _enabled():
        return
    limit = current_app.config["LOGIN_RATE_LIMIT"]
    hit(limit, TOO_MANY, "login-address", attempt.address)
    if attempt.device:
        hit(limit, TOO_MANY, "login-device", attempt.email, attempt.device)
        return
    key = ("login-account", attempt.email)
    if not limiter.limiter.test(parse(limit), *_key(*key)):
        raise Throttled(TOO_MANY, _retry_after(limit, *key))


def sign_in_failed(attempt: Attempt) -> None:
    """Count a failed attempt against the account's budget for untrusted clients."""
    if _enabled() and not attempt.device:
        limiter.limiter.hit(
            parse(current_app.config["LOGIN_RATE_LIMIT"]), *_key("login-account", attempt.email)
        )
