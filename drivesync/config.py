"""Configuration: safe defaults on a class, ``DRIVESYNC_*`` environment on top, validated.

Every key here is documented in the README's configuration table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

from .graph.oauth import DEFAULT_AUTHORITY, DEFAULT_SCOPES, DEFAULT_TENANT
from .graph.urls import DEFAULT_CONTENT_DOMAINS

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE = ROOT / "instance"

#: Secret keys that must never run in production (examples from docs, our own placeholders).
KNOWN_BAD_SECRETS = {"", "dev", "change-me", "changeme", "secret", "test", "you-will-never-guess"}


class ConfigError(RuntimeError):
    """The configuration is unsafe or incomplete; the message says which key to set."""


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def load_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the Flask config built from defaults and ``DRIVESYNC_*`` variables in ``env``."""
    if env is None:
        # An optional .env in the working directory; real environment variables win.
        load_dotenv(Path.cwd() / ".env", override=False)
        env = os.environ
    instance = Path(env.get("DRIVESYNC_INSTANCE_DIR") or DEFAULT_INSTANCE)
    mode = env.get("DRIVESYNC_ENV", "development")
    if mode not in {"development", "production"}:
        raise ConfigError(f"DRIVESYNC_ENV must be development or production, got {mode!r}")
    production = mode == "production"
    cfg: dict[str, Any] = {
        "ENV_NAME": mode,
        "INSTANCE_DIR": str(instance),
        "SECRET_KEY": env.get("DRIVESYNC_SECRET_KEY", ""),
        "SQLALCHEMY_DATABASE_URI": env.get("DRIVESYNC_DATABASE_URL")
        or f"sqlite:///{instance / 'drivesync.sqlite3'}",
        "STORAGE_DIR": env.get("DRIVESYNC_STORAGE_DIR") or str(instance / "uploads"),
        "MAX_UPLOAD_MB": _env_int(env, "DRIVESYNC_MAX_UPLOAD_MB", 1024),
        "PROXY_COUNT": _env_int(env, "DRIVESYNC_PROXY_COUNT", 0),
        "PAGE_SIZE": _env_int(env, "DRIVESYNC_PAGE_SIZE", 25),
        # Microsoft identity platform and Graph (issue 4 fixes these names).
        "MS_CLIENT_ID": env.get("DRIVESYNC_MS_CLIENT_ID", ""),
        "MS_CLIENT_SECRET": env.get("DRIVESYNC_MS_CLIENT_SECRET", ""),
        "MS_TENANT": env.get("DRIVESYNC_MS_TENANT", DEFAULT_TENANT),
        "MS_AUTHORITY": env.get("DRIVESYNC_MS_AUTHORITY", DEFAULT_AUTHORITY),
        "GRAPH_URL": env.get("DRIVESYNC_GRAPH_URL", "https://graph.microsoft.com/v1.0"),
        "MS_SCOPES": env.get("DRIVESYNC_MS_SCOPES", " ".join(DEFAULT_SCOPES)),
        "MS_REDIRECT_URI": env.get("DRIVESYNC_MS_REDIRECT_URI", ""),
        "ONEDRIVE_FOLDER": env.get("DRIVESYNC_ONEDRIVE_FOLDER") or "drivesync",
        "TOKEN_KEYS": env.get("DRIVESYNC_TOKEN_KEYS", ""),
        # Hosts (and their subdomains) that Graph's download and upload URLs may point to.
        "GRAPH_CONTENT_DOMAINS": [
            d.strip()
            for d in env.get(
                "DRIVESYNC_GRAPH_CONTENT_DOMAINS", ",".join(DEFAULT_CONTENT_DOMAINS)
            ).split(",")
            if d.strip()
        ],
        "UPLOAD_FRAGMENT_MB": _env_int(env, "DRIVESYNC_UPLOAD_FRAGMENT_MB", 10),
        # Background sync.
        "SYNC_BATCH_LIMIT": _env_int(env, "DRIVESYNC_SYNC_BATCH_LIMIT", 100),
        "PENDING_LIST_LIMIT": _env_int(env, "DRIVESYNC_PENDING_LIST_LIMIT", 50),
        "SYNC_CONCURRENCY": _env_int(env, "DRIVESYNC_SYNC_CONCURRENCY", 4),
        "SYNC_GLOBAL_CONCURRENCY": _env_int(env, "DRIVESYNC_SYNC_GLOBAL_CONCURRENCY", 16),
        # A claim or run whose heartbeat (services/liveness.py, every third of this) stopped
        # for this long belongs to a dead worker: the scheduler recovers it.
        "SYNC_STALE_SECONDS": _env_int(env, "DRIVESYNC_SYNC_STALE_SECONDS", 90),
        "TASK_BACKEND": env.get("DRIVESYNC_TASK_BACKEND", "celery" if production else "thread"),
        "CELERY_BROKER_URL": env.get("DRIVESYNC_CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
        "CELERY_QUEUE": env.get("DRIVESYNC_CELERY_QUEUE", "drivesync"),
        # Extra Celery settings (tasks.py sets the visibility timeout and explains it).
        "CELERY": {},
        "TASK_THREADS": _env_int(env, "DRIVESYNC_TASK_THREADS", 2),
        # Automatic sync and the scheduler (services/autosync.py, services/scheduler.py).
        "AUTOSYNC_DEBOUNCE_SECONDS": _env_int(env, "DRIVESYNC_AUTOSYNC_DEBOUNCE_SECONDS", 5),
        "SCHEDULER_INTERVAL_SECONDS": _env_int(env, "DRIVESYNC_SCHEDULER_INTERVAL_SECONDS", 30),
        "RUN_REQUEUE_SECONDS": _env_int(env, "DRIVESYNC_RUN_REQUEUE_SECONDS", 120),
        # Changes made in OneDrive (services/changes.py): the delta check's period without
        # change notifications (with them, a daily backstop check).
        "DELTA_INTERVAL_SECONDS": _env_int(env, "DRIVESYNC_DELTA_INTERVAL", 900),
        "TOKEN_KEEPALIVE_DAYS": _env_int(env, "DRIVESYNC_TOKEN_KEEPALIVE_DAYS", 30),
        "FAILURE_NOTICE_HOURS": _env_int(env, "DRIVESYNC_FAILURE_NOTICE_HOURS", 24),
        # The first wait before a failed file is tried again (doubling up to six hours).
        "SYNC_RETRY_BASE_SECONDS": _env_int(env, "DRIVESYNC_SYNC_RETRY_BASE_SECONDS", 60),
        # "module:attr" of a callable user_id -> Drive; empty = Microsoft Graph (tests swap it).
        "SYNC_DRIVE_FACTORY": env.get("DRIVESYNC_SYNC_DRIVE_FACTORY", ""),
        # Sign-in rate limiting (flask-limiter storage URI).
        # Production keeps the counters in Redis (the Celery broker's, unless set), so every
        # worker and host shares them; memory:// counts per process.
        "RATELIMIT_STORAGE_URI": env.get("DRIVESYNC_RATELIMIT_STORAGE_URI")
        or (
            env.get("DRIVESYNC_CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
            if production
            else "memory://"
        ),
        # Set when production really runs one process (memory:// counters are then whole).
        "SINGLE_PROCESS": _env_bool(env, "DRIVESYNC_SINGLE_PROCESS", False),
        "LOGIN_RATE_LIMIT": env.get("DRIVESYNC_LOGIN_RATE_LIMIT", "10 per minute"),
        "SIGNUP_RATE_LIMIT": env.get("DRIVESYNC_SIGNUP_RATE_LIMIT", "5 per hour"),
        "RESET_RATE_LIMIT": env.get("DRIVESYNC_RESET_RATE_LIMIT", "5 per hour"),
        # Accounts: open sign-up (with a mailed link) or closed (accounts made with the CLI).
        "SIGNUP": env.get("DRIVESYNC_SIGNUP", "open"),
        # Sessions: a sign-in lasts SESSION_HOURS, or REMEMBER_DAYS with "Keep me signed in".
        "SESSION_HOURS": _env_int(env, "DRIVESYNC_SESSION_HOURS", 12),
        "REMEMBER_DAYS": _env_int(env, "DRIVESYNC_REMEMBER_DAYS", 30),
        # Password reset links expire after this many minutes.
        "RESET_MINUTES": _env_int(env, "DRIVESYNC_RESET_MINUTES", 30),
        # Mail: smtp://, smtp+starttls:// or smtps:// (empty: development writes instance/outbox/).
        "SMTP_URL": env.get("DRIVESYNC_SMTP_URL", ""),
        # The site's public address for links in mails (else MS_REDIRECT_URI's, else the request's).
        "PUBLIC_URL": env.get("DRIVESYNC_PUBLIC_URL", ""),
        # Graph change notifications (services/subscriptions.py): auto = on when PUBLIC_URL is
        # https, on = required (refuses to start without an https PUBLIC_URL), off = poll only.
        "WEBHOOKS": env.get("DRIVESYNC_WEBHOOKS", "auto").strip().lower(),
        "WEBHOOK_RATE_LIMIT": env.get("DRIVESYNC_WEBHOOK_RATE_LIMIT", "120 per minute"),
        "MAIL_FROM": env.get("DRIVESYNC_MAIL_FROM", "drivesync <no-reply@localhost>"),
        # Host names the app answers to (comma-separated); empty accepts any Host header.
        "TRUSTED_HOSTS": [
            h.strip() for h in env.get("DRIVESYNC_TRUSTED_HOSTS", "").split(",") if h.strip()
        ]
        or None,
        # Data rights (issue 12): per-user quota (0 = unlimited; 5 GB by default in production),
        # audit retention, and when an export runs in the background instead of streaming.
        "USER_QUOTA_MB": _env_int(env, "DRIVESYNC_USER_QUOTA_MB", 5120 if production else 0),
        "AUDIT_RETENTION_DAYS": _env_int(env, "DRIVESYNC_AUDIT_RETENTION_DAYS", 365),
        "EXPORT_INLINE_MB": _env_int(env, "DRIVESYNC_EXPORT_INLINE_MB", 200),
        "EXPORT_LINK_MINUTES": _env_int(env, "DRIVESYNC_EXPORT_LINK_MINUTES", 60),
        # Operations: logs, metrics (see drivesync/observability).
        "LOG_FORMAT": env.get("DRIVESYNC_LOG_FORMAT") or ("json" if production else "text"),
        "LOG_LEVEL": (env.get("DRIVESYNC_LOG_LEVEL") or "INFO").upper(),
        "METRICS_TOKEN": env.get("DRIVESYNC_METRICS_TOKEN", ""),
        "WORKER_METRICS_ADDR": env.get("DRIVESYNC_WORKER_METRICS_ADDR", ""),
        # Development only: the bundled OneDrive emulator's base URL.
        "EMULATOR_URL": env.get("DRIVESYNC_EMULATOR_URL", ""),
        # Flask / cookies.
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": _env_bool(env, "DRIVESYNC_SECURE_COOKIES", production),
        "REMEMBER_COOKIE_SECURE": _env_bool(env, "DRIVESYNC_SECURE_COOKIES", production),
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the session
        "TESTING": False,
    }
    cfg["MAX_CONTENT_LENGTH"] = cfg["MAX_UPLOAD_MB"] * 1024 * 1024
    cfg["REMEMBER_COOKIE_DURATION"] = timedelta(days=cfg["REMEMBER_DAYS"])
    if cfg["SQLALCHEMY_DATABASE_URI"].startswith("postgres://"):
        raise ConfigError("DRIVESYNC_DATABASE_URL must use postgresql+psycopg://, not postgres://")
    return cfg


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` if ``cfg`` is unsafe for the environment it claims to be."""
    if cfg["MAX_UPLOAD_MB"] < 1:
        raise ConfigError("DRIVESYNC_MAX_UPLOAD_MB must be at least 1")
    if cfg["PAGE_SIZE"] < 1 or cfg["PAGE_SIZE"] > 500:
        raise ConfigError("DRIVESYNC_PAGE_SIZE must be between 1 and 500")
    if cfg["PROXY_COUNT"] < 0:
        raise ConfigError("DRIVESYNC_PROXY_COUNT must be 0 or more")
    if cfg["SYNC_CONCURRENCY"] < 1 or cfg["SYNC_GLOBAL_CONCURRENCY"] < 1:
        raise ConfigError("sync concurrency settings must be at least 1")
    if cfg["TASK_THREADS"] < 1:
        raise ConfigError("DRIVESYNC_TASK_THREADS must be at least 1")
    if cfg["PENDING_LIST_LIMIT"] < 1:
        raise ConfigError("DRIVESYNC_PENDING_LIST_LIMIT must be at least 1")
    if cfg["SYNC_BATCH_LIMIT"] < 1:
        raise ConfigError("DRIVESYNC_SYNC_BATCH_LIMIT must be at least 1")
    if not str(cfg["ONEDRIVE_FOLDER"]).strip("/"):
        raise ConfigError("DRIVESYNC_ONEDRIVE_FOLDER must name a folder, e.g. drivesync")
    if cfg["USER_QUOTA_MB"] < 0 or cfg["EXPORT_INLINE_MB"] < 0:
        raise ConfigError(
            "DRIVESYNC_USER_QUOTA_MB and DRIVESYNC_EXPORT_INLINE_MB must be 0 or more"
        )
    if cfg["AUDIT_RETENTION_DAYS"] < 1 or cfg["EXPORT_LINK_MINUTES"] < 1:
        raise ConfigError(
            "DRIVESYNC_AUDIT_RETENTION_DAYS and DRIVESYNC_EXPORT_LINK_MINUTES must be at least 1"
        )
    if cfg["AUTOSYNC_DEBOUNCE_SECONDS"] < 0:
        raise ConfigError("DRIVESYNC_AUTOSYNC_DEBOUNCE_SECONDS must be 0 or more")
    if cfg["RUN_REQUEUE_SECONDS"] < 1:
        raise ConfigError("DRIVESYNC_RUN_REQUEUE_SECONDS must be at least 1")
    if cfg["SCHEDULER_INTERVAL_SECONDS"] < 1:
        raise ConfigError("DRIVESYNC_SCHEDULER_INTERVAL_SECONDS must be at least 1")
    if cfg["DELTA_INTERVAL_SECONDS"] < 1:
        raise ConfigError("DRIVESYNC_DELTA_INTERVAL must be at least 1 (seconds)")
    if cfg["TOKEN_KEEPALIVE_DAYS"] < 1 or cfg["TOKEN_KEEPALIVE_DAYS"] > 80:
        raise ConfigError(
            "DRIVESYNC_TOKEN_KEEPALIVE_DAYS must be between 1 and 80 (tokens die at 90)"
        )
    if cfg["SYNC_RETRY_BASE_SECONDS"] < 1:
        raise ConfigError("DRIVESYNC_SYNC_RETRY_BASE_SECONDS must be at least 1")
    if cfg["FAILURE_NOTICE_HOURS"] < 1:
        raise ConfigError("DRIVESYNC_FAILURE_NOTICE_HOURS must be at least 1")
    if cfg["TASK_BACKEND"] not in {"thread", "celery", "eager"}:
        raise ConfigError("DRIVESYNC_TASK_BACKEND must be thread or celery")
    if cfg["SIGNUP"] not in {"open", "closed"}:
        raise ConfigError("DRIVESYNC_SIGNUP must be open or closed")
    for key, low in (("SESSION_HOURS", 1), ("REMEMBER_DAYS", 1), ("RESET_MINUTES", 5)):
        if cfg[key] < low:
            raise ConfigError(f"DRIVESYNC_{key} must be at least {low}")
    if cfg["LOG_FORMAT"] not in {"json", "text"}:
        raise ConfigError("DRIVESYNC_LOG_FORMAT must be json or text")
    if cfg["LOG_LEVEL"] not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("DRIVESYNC_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
    if cfg["METRICS_TOKEN"] and len(cfg["METRICS_TOKEN"]) < 16:
        raise ConfigError("DRIVESYNC_METRICS_TOKEN must be at least 16 characters")
    addr = cfg["WORKER_METRICS_ADDR"]
    if addr and not addr.rpartition(":")[2].isdigit():
        raise ConfigError("DRIVESYNC_WORKER_METRICS_ADDR must be host:port (e.g. 127.0.0.1:9809)")
    fragment = cfg["UPLOAD_FRAGMENT_MB"] * 1024 * 1024
    if fragment <= 0 or fragment % (320 * 1024) or fragment > 60 * 1024 * 1024:
        raise ConfigError(
            "DRIVESYNC_UPLOAD_FRAGMENT_MB must give a multiple of 320 KiB up to 60 MiB "
            "(5, 10, 15 … 60)"
        )
    if cfg.get("WEBHOOKS", "auto") not in ("auto", "on", "off"):
        raise ConfigError("DRIVESYNC_WEBHOOKS must be auto, on or off")
    if cfg.get("WEBHOOKS") == "on" and not str(cfg.get("PUBLIC_URL") or "").startswith("https://"):
        # Graph delivers change notifications only to an https:// notificationUrl.
        raise ConfigError("DRIVESYNC_WEBHOOKS=on needs an https:// DRIVESYNC_PUBLIC_URL")
    if cfg.get("ENV_NAME") == "production" and not cfg.get("TESTING"):
        if cfg["SECRET_KEY"] in KNOWN_BAD_SECRETS or len(cfg["SECRET_KEY"]) < 32:
            raise ConfigError(
                "production needs DRIVESYNC_SECRET_KEY: at least 32 random characters"
            )
        if not cfg["TOKEN_KEYS"]:
            raise ConfigError("production needs DRIVESYNC_TOKEN_KEYS (see `flask tokens new-key`)")
        if cfg["EMULATOR_URL"]:
            raise ConfigError("the OneDrive emulator is for development only; unset EMULATOR_URL")
        for key in ("MS_AUTHORITY", "GRAPH_URL"):
            if not str(cfg[key]).startswith("https://"):
                raise ConfigError(f"production needs an https:// DRIVESYNC_{key}")
        for key in ("MS_CLIENT_ID", "MS_CLIENT_SECRET"):
            if not cfg[key]:
                raise ConfigError(f"production needs DRIVESYNC_{key}")
        if cfg["RATELIMIT_STORAGE_URI"].startswith("memory://") and not cfg["SINGLE_PROCESS"]:
            # Each gunicorn worker would keep its own counters: 4 workers, 4 times the guesses.
            raise ConfigError(
                "production needs shared rate-limit counters: set DRIVESYNC_RATELIMIT_STORAGE_URI "
                "to redis://… (or DRIVESYNC_SINGLE_PROCESS=true if only one process serves)"
            )
        if not (cfg["MS_REDIRECT_URI"] or cfg.get("TRUSTED_HOSTS")):
            # Else the OAuth redirect URI would follow a client's Host / X-Forwarded-Host.
            raise ConfigError(
                "production needs DRIVESYNC_MS_REDIRECT_URI or DRIVESYNC_TRUSTED_HOSTS"
            )
        if cfg["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
            logger.warning("production is running on SQLite; PostgreSQL is recommended")
