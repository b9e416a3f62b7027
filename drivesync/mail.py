"""Outgoing mail (password reset, sign-up links) through flask-mailman.

``DRIVESYNC_SMTP_URL`` picks the server: ``smtp://user:pass@host:25`` (plain, for a local relay),
``smtp+starttls://…:587`` or ``smtps://…:465``. Without it, development writes each message as a
file to ``instance/outbox/`` and logs where; production then sends no mail at all and the pages
that would send one say so (``mail_enabled``).

Messages leave in a background thread, so a request that sends a mail takes as long as one that
does not (the reset page must not tell by its timing whether an address has an account).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Flask, current_app
from flask_mailman import EmailMessage, Mail

logger = logging.getLogger(__name__)

mail = Mail()
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="drivesync-mail")

SCHEMES = {"smtp": (False, False), "smtp+starttls": (True, False), "smtps": (False, True)}


class MailConfigError(ValueError):
    """``DRIVESYNC_SMTP_URL`` cannot be understood."""


def smtp_settings(url: str) -> dict[str, Any]:
    """Return flask-mailman's ``MAIL_*`` settings for an SMTP URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise MailConfigError(
            "DRIVESYNC_SMTP_URL must look like smtp://host:25, smtp+starttls://user:pass@host:587 "
            "or smtps://user:pass@host:465"
        )
    tls, ssl = SCHEMES[parts.scheme]
    return {
        "MAIL_BACKEND": "smtp",
        "MAIL_SERVER": parts.hostname,
        "MAIL_PORT": parts.port or (465 if ssl else 587 if tls else 25),
        "MAIL_USERNAME": unquote(parts.username) if parts.username else None,
        "MAIL_PASSWORD": unquote(parts.password) if parts.password else None,
        "MAIL_USE_TLS": tls,
        "MAIL_USE_SSL": ssl,
        "MAIL_TIMEOUT": 20,
    }


def outbox_dir(app: Flask) -> Path:
    """Return the folder development writes its mail to."""
    return Path(app.config["INSTANCE_DIR"]) / "outbox"


def init_app(app: Flask) -> None:
    """Configure flask-mailman from ``SMTP_URL`` (or the development outbox)."""
    app.config.setdefault("MAIL_DEFAULT_SENDER", app.config.get("MAIL_FROM"))
    if app.config.get("SMTP_URL"):
        app.config.update(smtp_settings(app.config["SMTP_URL"]))
        app.config["MAIL_ENABLED"] = True
    elif app.config.get("ENV_NAME") == "production":
        app.config["MAIL_BACKEND"] = "dummy"
        app.config["MAIL_ENABLED"] = False
        logger.warning("DRIVESYNC_SMTP_URL is not set: no password reset or sign-up mail is sent")
    else:
        outbox = outbox_dir(app)
        app.config.update(MAIL_BACKEND="file", MAIL_FILE_PATH=str(outbox), MAIL_ENABLED=True)
    mail.init_app(app)


def mail_enabled() -> bool:
    """Return whether this server can send mail."""
    return bool(current_app.config.get("MAIL_ENABLED"))


def send(to: str, subject: str, body: str) -> Future[None]:
    """Send a plain-text message in the background; return its future (tests wait on it)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # werkzeug proxy

    def _send() -> None:
        with app.app_context():
            try:
                EmailMessage(subject, body, to=[to]).send()
            except Exception:  # a mail server that is down must not break the request
                logger.exception("could not send a mail (%s)", subject)
                raise
            if app.config.get("MAIL_BACKEND") == "file":
                # Development: say where the link is (the file holds it; the log does not).
                logger.warning("mail written to %s", app.config["MAIL_FILE_PATH"])

    return _executor.submit(_send)
