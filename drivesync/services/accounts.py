"""Accounts: sign-up and sign-in rules, server-side sessions, password change and reset.

Sessions: every sign-in gets a ``user_sessions`` row and a random token; the session cookie
(and the remember-me cookie, which flask-login copies from it) carries ``<user id>:<token>``.
A cookie is honoured only while its row exists and has not expired, so deleting rows ends
sessions on the server: sign-out ends one, a password change or reset ends all the others,
"sign out everywhere" ends them all.

Reset links are itsdangerous tokens (signed, timestamped) that carry the user id and a
fingerprint of the password hash they were issued for. They expire after ``RESET_MINUTES`` and
die as soon as the password changes, which makes each one single-use without a table to keep.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.exc import IntegrityError

from .. import events, mail
from ..extensions import db
from ..models import User, UserSession, utcnow
from ..scope import user_scope
from .errors import ValidationError

logger = logging.getLogger(__name__)

# Argon2id, memory-hard (RFC 9106's second recommended option: 64 MiB, 3 passes).
_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so both paths cost the same time.
_DUMMY_HASH = _hasher.hash("drivesync-timing-equaliser")

# Deliberately loose (the only real check is a mail that arrives), but no control characters.
_ATOM = r"[^@\s\x00-\x1f\x7f]"
EMAIL_RE = re.compile(rf"^{_ATOM}{{1,64}}@{_ATOM}+\.{_ATOM}+$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


def normalise_email(email: str) -> str:
    """Return the canonical form of an e-mail address: trimmed and case-folded."""
    return (email or "").strip().casefold()


def validate_email(email: str) -> dict[str, str]:
    """Return the e-mail field's error, if any."""
    email = normalise_email(email)
    if not email:
        return {"email": "Enter your e-mail address."}
    if len(email) > 254 or not EMAIL_RE.match(email):
        return {"email": "Enter a valid e-mail address, like name@example.com."}
    return {}


def validate_signup(email: str, password: str, confirm: str) -> dict[str, str]:
    """Return field errors for a sign-up form (empty when it is acceptable)."""
    return {**validate_email(email), **validate_password(password, confirm)}


def validate_password(password: str, confirm: str, field: str = "password") -> dict[str, str]:
    """Return field errors for a new password and its confirmation (empty when acceptable)."""
    errors: dict[str, str] = {}
    if len(password or "") < MIN_PASSWORD:
        errors[field] = f"Use at least {MIN_PASSWORD} characters for your password."
    elif len(password) > MAX_PASSWORD:
        errors[field] = f"Use at most {MAX_PASSWORD} characters for your password."
    elif "\x00" in password:
        errors[field] = "Your password cannot contain a NUL character."  # noqa: S105
    if not errors and password != confirm:
        errors["confirm"] = "The two passwords do not match."
    return errors


def _user_by_email(email: str) -> User | None:
    email = normalise_email(email)
    if not email or len(email) > 254:
        return None
    return db.session.execute(db.select(User).where(User.email == email)).scalar_one_or_none()


def create_user(
    email: str, password: str, confirm: str | None = None, *, actor: str | None = None
) -> User:
    """Create a user after validating the form; raise ``ValidationError`` otherwise.

    ``actor`` names who made the account when it is not the person signing up (the CLI passes
    ``"operator"``); the audit log records it with ``account_created``.
    """
    errors = validate_signup(email, password, password if confirm is None else confirm)
    if errors:
        raise ValidationError(errors)
    duplicate = ValidationError(
        {"email": "An account with this e-mail already exists. Sign in instead."}
    )
    # Looked up before hashing: a duplicate must not cost a 64 MiB Argon2 hash (probe L2).
    if _user_by_email(email) is not None:
        raise duplicate
    user = User(email=normalise_email(email), password_hash=_hasher.hash(password))
    db.session.add(user)
    try:
        db.session.flush()
        events.account_created.send(None, user_id=user.id, actor=actor)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise duplicate from None
    logger.info("user %s signed up", user.id)
    return user


def user_id_for_email(email: str) -> int | None:
    """Return the id of the account with this e-mail, or ``None`` (for rate-limit keys)."""
    user = _user_by_email(email)
    return user.id if user else None


def _verify(user: User | None, password: str) -> bool:
    """Check ``password`` against the user's hash (or a dummy one: same cost either way)."""
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, (password or "")[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return False
    return user is not None


def check_password(user: User, password: str) -> bool:
    """Return whether ``password`` is the signed-in ``user``'s own (a re-entry, not a sign-in)."""
    return _verify(user, password)


def authenticate(email: str, password: str) -> User | None:
    """Return the user whose credentials these are, or ``None`` (same cost either way)."""
    user = _user_by_email(email)
    if not _verify(user, password):
        events.sign_in_failed.send(None, email=normalise_email(email)[:254])
        db.session.commit()
        return None
    assert user is not None  # noqa: S101 - _verify is False without a user
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
        db.session.commit()
    return user


# -- sign-up by mail ------------------------------------------------------------------------------

SIGNUP_LINK_HOURS = 24


def _loads(serializer: URLSafeTimedSerializer, token: str, max_age: int) -> Any:
    """Return a signed token's payload, or ``None`` if it is forged or older than ``max_age``."""
    try:
        return serializer.loads(token, max_age=max_age)
    except BadSignature:  # SignatureExpired is one too
        return None


def _signup_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="drivesync-signup")


def request_signup(email: str, link_for: Callable[[str], str], sign_in_url: str) -> None:
    """Mail a link that finishes creating an account, or, when the address already has one, a
    note saying so. The caller answers the same either way (probe L2: no enumeration), and no
    password is hashed here, so a flood of sign-ups costs no Argon2 work.
    """
    errors = validate_email(email)
    if errors:
        raise ValidationError(errors)
    email = normalise_email(email)
    if _user_by_email(email) is not None:
        mail.send(
            email,
            "You already have a drivesync account",
            "Someone (hopefully you) tried to create a drivesync account with this address, "
            "but it already has one.\n\n"
            f"Sign in here: {sign_in_url}\n\n"
            'Forgot your password? Use "Forgot password?" on that page.\n'
            "If this was not you, ignore this mail: nothing has changed.\n",
        )
        return
    link = link_for(str(_signup_serializer().dumps(email)))
    mail.send(
        email,
        "Finish creating your drivesync account",
        "Someone (hopefully you) asked to create a drivesync account with this address.\n\n"
        f"Choose your password here (the link works for {SIGNUP_LINK_HOURS} hours):\n\n"
        f"{link}\n\n"
        "If this was not you, ignore this mail: no account is created.\n",
    )


def signup_email_for_token(token: str) -> str | None:
    """Return the address a sign-up link is for, or ``None`` (expired, forged or used)."""
    email = _loads(_signup_serializer(), token, SIGNUP_LINK_HOURS * 3600)
    if not isinstance(email, str) or _user_by_email(email) is not None:
        return None
    return email


def complete_signup(token: str, password: str, confirm: str) -> User:
    """Create the account of a sign-up link with the chosen password."""
    email = signup_email_for_token(token)
    if email is None:
        raise ValidationError({"token": SIGNUP_LINK_DEAD})
    return create_user(email, password, confirm)


SIGNUP_LINK_DEAD = "This sign-up link has expired or was already used."


# -- sessions ------------------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _parse_session_key(key: str) -> tuple[int, str] | None:
    uid, sep, token = (key or "").partition(":")
    if not sep or not uid.isdigit() or len(uid) > 12 or not 20 <= len(token) <= 100:
        return None
    return int(uid), token


def start_session(user_id: int, remember: bool = False) -> str:
    """Open a server-side session for a sign-in; return the key the cookie carries."""
    cfg = current_app.config
    lifetime = (
        timedelta(days=cfg["REMEMBER_DAYS"]) if remember else timedelta(hours=cfg["SESSION_HOURS"])
    )
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with user_scope(user_id):
        # Expired rows of this user go at the next sign-in: no sweeper needed.
        db.session.execute(
            db.delete(UserSession).where(
                UserSession.user_id == user_id, UserSession.expires_at < now
            )
        )
        db.session.add(
            UserSession(
                user_id=user_id,
                token_hash=_token_hash(token),
                remember=remember,
                created_at=now,
                expires_at=now + lifetime,
            )
        )
        events.signed_in.send(None, user_id=user_id, remember=remember)
        db.session.commit()
    return f"{user_id}:{token}"


def session_user(key: str) -> User | None:
    """Return the user of a live session key (from a cookie), or ``None``."""
    parsed = _parse_session_key(key)
    if parsed is None:
        return None
    user_id, token = parsed
    with user_scope(user_id):
        # One query per request: the user, only if this session of theirs is live.
        return db.session.execute(
            db.select(User)
            .join(UserSession, UserSession.user_id == User.id)
            .where(
                User.id == user_id,
                UserSession.token_hash == _token_hash(token),
                UserSession.expires_at > utcnow(),
            )
        ).scalar_one_or_none()


def end_session(key: str) -> None:
    """End one session (sign-out): its cookies are refused from now on."""
    parsed = _parse_session_key(key)
    if parsed is None:
        return
    user_id, token = parsed
    with user_scope(user_id):
        db.session.execute(
            db.delete(UserSession).where(
                UserSession.user_id == user_id, UserSession.token_hash == _token_hash(token)
            )
        )
        events.signed_out.send(None, user_id=user_id)
        db.session.commit()


def _end_sessions(user_id: int, keep: str | None = None) -> int:
    """Delete the user's sessions except ``keep``; return how many ended (caller commits)."""
    query = db.delete(UserSession).where(UserSession.user_id == user_id)
    parsed = _parse_session_key(keep) if keep else None
    if parsed is not None:
        query = query.where(UserSession.token_hash != _token_hash(parsed[1]))
    with user_scope(user_id):
        return int(getattr(db.session.execute(query), "rowcount", 0) or 0)


def end_other_sessions(user_id: int, keep: str | None) -> int:
    """Sign out everywhere else: end every session of the user but ``keep``; return how many."""
    with user_scope(user_id):
        ended = _end_sessions(user_id, keep=keep)
        events.sessions_ended.send(None, user_id=user_id, count=ended)
        db.session.commit()
    return ended


def count_sessions(user_id: int) -> int:
    """Return how many live sessions the user has."""
    with user_scope(user_id):
        return len(
            db.session.execute(
                db.select(UserSession.id).where(
                    UserSession.user_id == user_id, UserSession.expires_at > utcnow()
                )
            ).all()
        )


# -- password change and reset -------------------------------------------------------------------


def change_password(
    user_id: int, current: str, new: str, confirm: str, keep_session: str | None
) -> None:
    """Change the password after checking the current one; end every other session."""
    user = db.session.get(User, user_id)
    if user is None or not _verify(user, current):
        raise ValidationError({"current": "That is not your current password."})
    errors = validate_password(new, confirm)
    if errors:
        raise ValidationError(errors)
    user.password_hash = _hasher.hash(new)
    with user_scope(user_id):
        _end_sessions(user_id, keep=keep_session)
        events.password_changed.send(None, user_id=user_id)
        db.session.commit()
    logger.info("user %s changed their password", user_id)


def _reset_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="drivesync-password-reset")


def _password_fingerprint(user: User) -> str:
    """A value that changes whenever the password does (the hash has a fresh salt each time)."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:32]


def reset_token(user: User) -> str:
    """Return a reset token for the user's current password."""
    return str(_reset_serializer().dumps({"u": user.id, "p": _password_fingerprint(user)}))


def request_password_reset(email: str, link_for: Callable[[str], str]) -> None:
    """Mail a reset link to the account with this e-mail, if there is one.

    The caller answers the same whatever happens here, and sending happens in the background,
    so neither the answer nor its timing tells whether the address has an account.
    """
    user = _user_by_email(email)
    if user is None:
        return
    minutes = current_app.config["RESET_MINUTES"]
    link = link_for(reset_token(user))
    mail.send(
        user.email,
        "Reset your drivesync password",
        "Someone (hopefully you) asked to reset the password of your drivesync account.\n\n"
        f"Choose a new password here (the link works once, for {minutes} minutes):\n\n"
        f"{link}\n\n"
        "If you did not ask for this, ignore this mail: your password stays as it is.\n",
    )
    events.password_reset_requested.send(None, user_id=user.id)
    db.session.commit()


def user_for_reset_token(token: str) -> User | None:
    """Return the user a reset token is valid for, or ``None`` (expired, used or forged)."""
    data = _loads(_reset_serializer(), token, current_app.config["RESET_MINUTES"] * 60)
    if not isinstance(data, dict) or not isinstance(data.get("u"), int):
        return None
    user = db.session.get(User, data["u"])
    if user is None or not hmac.compare_digest(str(data.get("p")), _password_fingerprint(user)):
        return None
    return user


def reset_password(token: str, new: str, confirm: str) -> User:
    """Set a new password through a reset token; end every session of the account."""
    user = user_for_reset_token(token)
    if user is None:
        raise ValidationError({"token": RESET_LINK_DEAD})
    errors = validate_password(new, confirm)
    if errors:
        raise ValidationError(errors)
    user.password_hash = _hasher.hash(new)
    with user_scope(user.id):
        _end_sessions(user.id)
        events.password_reset.send(None, user_id=user.id)
        db.session.commit()
    logger.info("user %s reset their password", user.id)
    return user


RESET_LINK_DEAD = "This reset link has expired or was already used. Ask for a new one below."  # noqa: S105


def get_user(user_id: int) -> User | None:
    """Return the user with this id, or ``None``."""
    return db.session.get(User, user_id)
