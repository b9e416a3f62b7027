"""Sign-up and sign-in rules."""

from __future__ import annotations

import logging
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..models import User
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


def validate_signup(email: str, password: str, confirm: str) -> dict[str, str]:
    """Return field errors for a sign-up form (empty when it is acceptable)."""
    errors: dict[str, str] = {}
    email = normalise_email(email)
    if not email:
        errors["email"] = "Enter your e-mail address."
    elif len(email) > 254 or not EMAIL_RE.match(email):
        errors["email"] = "Enter a valid e-mail address, like name@example.com."
    if len(password or "") < MIN_PASSWORD:
        errors["password"] = f"Use at least {MIN_PASSWORD} characters for your password."
    elif len(password) > MAX_PASSWORD:
        errors["password"] = f"Use at most {MAX_PASSWORD} characters for your password."
    elif "\x00" in password:
        errors["password"] = "Your password cannot contain a NUL character."  # noqa: S105
    if not errors.get("password") and password != confirm:
        errors["confirm"] = "The two passwords do not match."
    return errors


def create_user(email: str, password: str, confirm: str | None = None) -> User:
    """Create a user after validating the form; raise ``ValidationError`` otherwise."""
    errors = validate_signup(email, password, password if confirm is None else confirm)
    if errors:
        raise ValidationError(errors)
    user = User(email=normalise_email(email), password_hash=_hasher.hash(password))
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ValidationError(
            {"email": "An account with this e-mail already exists. Sign in instead."}
        ) from None
    logger.info("user %s signed up", user.id)
    return user


def authenticate(email: str, password: str) -> User | None:
    """Return the user whose credentials these are, or ``None`` (same cost either way)."""
    email = normalise_email(email)
    user = None
    if email and len(email) <= 254:
        user = db.session.execute(db.select(User).where(User.email == email)).scalar_one_or_none()
    stored = user.password_hash if user else _DUMMY_HASH
    try:
        _hasher.verify(stored, (password or "")[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
        db.session.commit()
    return user


def get_user(user_id: int) -> User | None:
    """Return the user with this id, or ``None``."""
    return db.session.get(User, user_id)
