"""Configuration: defaults, environment, and refusing unsafe production settings."""

from __future__ import annotations

import pytest

from drivesync import create_app
from drivesync.config import ConfigError, load_config, validate_config

GOOD_PROD = {
    "DRIVESYNC_ENV": "production",
    "DRIVESYNC_SECRET_KEY": "k" * 40,
    "DRIVESYNC_TOKEN_KEYS": "x",
    "DRIVESYNC_MS_CLIENT_ID": "id",
    "DRIVESYNC_MS_CLIENT_SECRET": "secret",
    "DRIVESYNC_DATABASE_URL": "postgresql+psycopg://app@db/drivesync",
    "DRIVESYNC_MS_REDIRECT_URI": "https://drivesync.example/settings/onedrive/callback",
}


def test_defaults_are_the_embedded_setup(tmp_path):
    """Without environment, the app runs on SQLite in the instance folder with threads."""
    cfg = load_config({"DRIVESYNC_INSTANCE_DIR": str(tmp_path)})
    validate_config(cfg)
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'drivesync.sqlite3'}"
    assert cfg["STORAGE_DIR"] == str(tmp_path / "uploads")
    assert cfg["TASK_BACKEND"] == "thread" and cfg["PROXY_COUNT"] == 0
    assert cfg["MAX_CONTENT_LENGTH"] == 1024 * 1024 * 1024


def test_production_accepts_a_complete_config():
    """A complete production configuration validates and turns on secure cookies and Celery."""
    cfg = load_config(GOOD_PROD)
    validate_config(cfg)
    assert cfg["SESSION_COOKIE_SECURE"] and cfg["TASK_BACKEND"] == "celery"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"DRIVESYNC_SECRET_KEY": ""}, "DRIVESYNC_SECRET_KEY"),
        ({"DRIVESYNC_SECRET_KEY": "change-me"}, "DRIVESYNC_SECRET_KEY"),
        ({"DRIVESYNC_SECRET_KEY": "short"}, "DRIVESYNC_SECRET_KEY"),
        ({"DRIVESYNC_TOKEN_KEYS": ""}, "DRIVESYNC_TOKEN_KEYS"),
        ({"DRIVESYNC_MS_CLIENT_ID": ""}, "DRIVESYNC_MS_CLIENT_ID"),
        ({"DRIVESYNC_MS_CLIENT_SECRET": ""}, "DRIVESYNC_MS_CLIENT_SECRET"),
        ({"DRIVESYNC_EMULATOR_URL": "http://127.0.0.1:5001"}, "emulator"),
        ({"DRIVESYNC_MS_AUTHORITY": "http://login.example"}, "https://"),
        ({"DRIVESYNC_GRAPH_URL": "http://graph.example/v1.0"}, "https://"),
    ],
)
def test_production_refuses_unsafe_config(change, message):
    """Production refuses to start with a weak or missing secret, keys, client or the emulator."""
    with pytest.raises(ConfigError, match=message):
        validate_config(load_config({**GOOD_PROD, **change}))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DRIVESYNC_ENV": "staging"}, "DRIVESYNC_ENV"),
        ({"DRIVESYNC_MAX_UPLOAD_MB": "lots"}, "whole number"),
        ({"DRIVESYNC_MAX_UPLOAD_MB": "0"}, "at least 1"),
        ({"DRIVESYNC_UPLOAD_FRAGMENT_MB": "7"}, "320 KiB"),
        ({"DRIVESYNC_UPLOAD_FRAGMENT_MB": "65"}, "320 KiB"),
        ({"DRIVESYNC_TASK_BACKEND": "rq"}, "TASK_BACKEND"),
        ({"DRIVESYNC_DATABASE_URL": "postgres://x@y/z"}, "postgresql\\+psycopg"),
        ({"DRIVESYNC_SECURE_COOKIES": "maybe"}, "true or false"),
        ({"DRIVESYNC_ONEDRIVE_FOLDER": "//"}, "DRIVESYNC_ONEDRIVE_FOLDER"),
        ({"DRIVESYNC_WEBHOOKS": "maybe"}, "DRIVESYNC_WEBHOOKS"),
        ({"DRIVESYNC_WEBHOOKS": "on"}, "https:// DRIVESYNC_PUBLIC_URL"),
        (
            {"DRIVESYNC_WEBHOOKS": "on", "DRIVESYNC_PUBLIC_URL": "http://drivesync.example"},
            "https:// DRIVESYNC_PUBLIC_URL",
        ),
    ],
)
def test_bad_values_are_clear_errors(env, message):
    """Malformed settings fail fast with a message naming the variable."""
    with pytest.raises(ConfigError, match=message):
        validate_config(load_config(env))


def test_proxy_fix_only_when_configured(tmp_path):
    """ProxyFix trusts exactly PROXY_COUNT hops, and none by default."""
    base = {
        "TESTING": True,
        "SECRET_KEY": "s" * 40,
        "INSTANCE_DIR": str(tmp_path),
        "SQLALCHEMY_DATABASE_URI": "sqlite://",
    }
    app = create_app(base)
    assert type(app.wsgi_app).__name__ != "ProxyFix"
    app = create_app({**base, "PROXY_COUNT": 1})
    assert app.wsgi_app.x_for == 1 and app.wsgi_app.x_proto == 1


def test_development_secret_key_is_generated_once(tmp_path):
    """Development without a secret key generates one into the instance folder and reuses it."""
    base = {
        "TESTING": True,
        "SECRET_KEY": "",
        "INSTANCE_DIR": str(tmp_path),
        "SQLALCHEMY_DATABASE_URI": "sqlite://",
    }
    first = create_app(base).config["SECRET_KEY"]
    second = create_app(base).config["SECRET_KEY"]
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_empty_onedrive_folder_means_the_default():
    """An empty DRIVESYNC_ONEDRIVE_FOLDER falls back to the default folder, read in one place."""
    assert load_config({"DRIVESYNC_ONEDRIVE_FOLDER": ""})["ONEDRIVE_FOLDER"] == "drivesync"


def test_webhooks_on_with_an_https_public_url_is_accepted():
    """Webhooks need an https public URL; auto (the default) never refuses to start."""
    validate_config(
        load_config({"DRIVESYNC_WEBHOOKS": "on", "DRIVESYNC_PUBLIC_URL": "https://d.example"})
    )
    validate_config(load_config({"DRIVESYNC_PUBLIC_URL": "http://d.example"}))
    assert load_config({})["WEBHOOKS"] == "auto"
