"""Shared fixtures: an app on a fresh database (SQLite by default, PostgreSQL when asked)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from drivesync import create_app
from drivesync.extensions import db
from drivesync.models import File, User
from drivesync.scope import user_scope
from drivesync.services import accounts, library
from drivesync.services.storage import LocalStorage

pytest_plugins = ["tests.fixtures_emulator"]

ROOT = Path(__file__).resolve().parent.parent
# Owner URL (runs migrations, truncates) and the app's own unprivileged role (subject to RLS).
PG_OWNER_URL = os.environ.get("DRIVESYNC_TEST_POSTGRES_URL", "")
PG_APP_URL = os.environ.get("DRIVESYNC_TEST_POSTGRES_APP_URL", "") or PG_OWNER_URL
TABLES = ("oauth_tokens", "files", "sync_runs", "integrations", "users", "audit_events")
PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing() -> Iterator[None]:
    """Hash test passwords with cheap Argon2 parameters (the algorithm stays the same)."""
    real = accounts._hasher
    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    accounts._hasher = real


def migrate_database(url: str) -> None:
    """Run ``flask db upgrade`` against ``url`` in a subprocess, as a deployment would."""
    env = {**os.environ, "DRIVESYNC_DATABASE_URL": url, "DRIVESYNC_SECRET_KEY": "x" * 40}
    subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def postgres_schema() -> str:
    """Migrate the PostgreSQL test database once per session; return the app role's URL."""
    if not PG_OWNER_URL:
        pytest.skip("set DRIVESYNC_TEST_POSTGRES_URL to run PostgreSQL tests")
    engine = create_engine(PG_OWNER_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    migrate_database(PG_OWNER_URL)
    if PG_APP_URL != PG_OWNER_URL:
        role = create_engine(PG_APP_URL).url.username
        env = {
            **os.environ,
            "DRIVESYNC_DATABASE_URL": PG_OWNER_URL,
            "DRIVESYNC_SECRET_KEY": "x" * 40,
        }
        subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "db-grant", role],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
    return PG_APP_URL


def _truncate_postgres() -> None:
    engine = create_engine(PG_OWNER_URL)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Return a fresh database URL: PostgreSQL when configured, else a SQLite file."""
    if PG_OWNER_URL:
        url = request.getfixturevalue("postgres_schema")
        _truncate_postgres()
        yield url
        return
    yield f"sqlite:///{tmp_path / 'test.sqlite3'}"


def app_config(tmp_path: Path, database_url: str, **extra: Any) -> dict[str, Any]:
    """Return the overrides every test app uses."""
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key-" + "x" * 32,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "STORAGE_DIR": str(tmp_path / "storage"),
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "TOKEN_KEYS": "",
        "RATELIMIT_ENABLED": False,
        "TASK_BACKEND": "eager",
        **extra,
    }


@pytest.fixture
def app_overrides() -> dict[str, Any]:
    """Per-test config overrides (override this fixture in a module to change them)."""
    return {}


@pytest.fixture
def app(tmp_path: Path, database_url: str, app_overrides: dict[str, Any]) -> Iterator[Flask]:
    """A fresh app with its own database and storage folder."""
    app = create_app(app_config(tmp_path, database_url, **app_overrides))
    if not PG_OWNER_URL:
        with app.app_context():
            db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for ``app``."""
    return app.test_client()


@pytest.fixture
def make_user(app: Flask) -> Callable[..., int]:
    """Create a user and return its id."""
    counter = iter(range(1, 10_000))

    def _make(email: str | None = None, password: str = PASSWORD) -> int:
        with app.app_context():
            user = accounts.create_user(email or f"user{next(counter)}@example.com", password)
            return user.id

    return _make


def sign_in_as(client: FlaskClient, user_id: int, **session_kwargs: Any) -> str:
    """Open a server-side session for ``user_id`` and put its key into ``client``'s cookie."""
    with client.application.app_context():
        key = accounts.start_session(user_id)
    with client.session_transaction(**session_kwargs) as sess:
        sess["_user_id"] = key
        sess["_fresh"] = True
    return key


@pytest.fixture
def login(client: FlaskClient) -> Callable[[int], None]:
    """Sign a user in without the form (same trick as redash's authenticate_request)."""

    def _login(user_id: int) -> None:
        sign_in_as(client, user_id)

    return _login


@pytest.fixture
def make_file(app: Flask) -> Callable[..., int]:
    """Add a file to a user's library through the service; return its id."""

    def _make(owner_id: int, name: str = "notes.txt", data: bytes = b"hello world") -> int:
        with app.app_context(), user_scope(owner_id):
            store = LocalStorage(app.config["STORAGE_DIR"])
            incoming = store.new_incoming()
            incoming.write(data)
            return library.add_file(owner_id, name, incoming, store).id

    return _make


def csrf_token(client: FlaskClient, path: str = "/library/") -> str:
    """Fetch a page and return the CSRF token it carries."""
    import re

    html = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def outbox_messages(app: Flask, count: int = 1, timeout: float = 10.0) -> list[str]:
    """Wait for ``count`` mails in the development outbox (``instance/outbox/``); return them."""
    import time

    outbox = Path(app.config["INSTANCE_DIR"]) / "outbox"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(outbox.glob("*.log"), key=lambda p: p.stat().st_mtime_ns)
        texts = [f.read_text() for f in files]
        # The file backend ends each message with a line of 79 dashes: only whole ones count.
        if len([t for t in texts if t.rstrip().endswith("-" * 79)]) >= count:
            return texts
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} mails arrived in {outbox}")


def mailed_link(message: str, path: str) -> str:
    """Return the site-relative link to ``path`` in a mail (``/signup/…``)."""
    import re

    match = re.search(rf"https?://[^/\s]+({re.escape(path)}[^\s]+)", message)
    assert match, message
    return match.group(1)


def upload_payload(files: list[tuple[str, bytes]], token: str) -> dict[str, Any]:
    """Return form data for a multi-file upload."""
    return {"csrf_token": token, "files": [(io.BytesIO(d), n) for n, d in files]}


def db_rows(app: Flask, model: type, user_id: int | None = None) -> list[Any]:
    """Return all rows of ``model`` (inside the given user's scope on PostgreSQL)."""
    with app.app_context(), user_scope(user_id):
        return list(db.session.execute(db.select(model)).scalars())


__all__ = ["File", "User", "csrf_token", "upload_payload", "db_rows", "PASSWORD"]
