"""Flask commands: users, tokens, sync."""

from __future__ import annotations

import re

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import text

from . import tasks
from .extensions import db
from .models import User
from .scope import user_scope
from .services import accounts as accounts_service
from .services import library, sync
from .services.errors import ValidationError
from .services.integrations import rotate_token_keys
from .vault import VaultError, new_key

ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

users_cli = AppGroup("users", help="Manage user accounts.")
tokens_cli = AppGroup("tokens", help="Manage OAuth token encryption keys.")
sync_cli = AppGroup("sync", help="Run or inspect OneDrive syncs.")


@users_cli.command("create")
@click.argument("email")
@click.password_option()
def create_user(email: str, password: str) -> None:
    """Create a user account."""
    try:
        user = accounts_service.create_user(email, password)
    except ValidationError as e:
        raise click.ClickException(e.message) from None
    click.echo(f"created user {user.id} <{user.email}>")


@tokens_cli.command("new-key")
def tokens_new_key() -> None:
    """Print a fresh token key for DRIVESYNC_TOKEN_KEYS."""
    click.echo(new_key())


@click.command("db-grant")
@click.argument("role")
@with_appcontext
def db_grant(role: str) -> None:
    """Grant the app's PostgreSQL ROLE what it needs on the schema (run as the owner)."""
    if db.engine.dialect.name != "postgresql":
        raise click.ClickException("db-grant is for PostgreSQL; SQLite has no roles")
    if not ROLE_RE.match(role):
        raise click.ClickException("ROLE must be a plain PostgreSQL identifier")
    with db.engine.begin() as conn:
        # The app role may read and write rows (RLS still applies) but own nothing.
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(
            text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        )
        conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
        conn.execute(text(f"REVOKE ALL ON TABLE alembic_version FROM {role}"))
    click.echo(f"granted {role} row access on the drivesync schema")


@tokens_cli.command("rotate-key")
def tokens_rotate_key() -> None:
    """Re-encrypt every stored token with the first key of DRIVESYNC_TOKEN_KEYS."""
    try:
        rotated, total = rotate_token_keys()
    except VaultError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"re-encrypted {rotated} of {total} token rows with the current key")
    if total:
        click.echo("older keys can now be removed from DRIVESYNC_TOKEN_KEYS")


@sync_cli.command("run")
@click.argument("email")
def sync_run(email: str) -> None:
    """Sync EMAIL's pending files now, in this process, and print the outcome."""
    user = _user_by_email(email)
    with user_scope(user.id), tasks.inline():
        requested = sync.request_sync(user.id)
        run = sync.run_status(user.id, requested.id)
    assert run is not None  # noqa: S101 - just created
    click.echo(
        f"run {run.id}: {run.status}, {run.succeeded} synced, {run.failed} failed"
        + (f" ({run.error})" if run.error else "")
    )
    if run.failed or run.status != "done":
        raise SystemExit(1)


@sync_cli.command("status")
@click.argument("email")
def sync_status(email: str) -> None:
    """Print how many of EMAIL's files are in each sync state."""
    user = _user_by_email(email)
    with user_scope(user.id):
        counts = library.summary_counts(user.id)
    for status in ("not_synced", "syncing", "synced", "error", "conflict"):
        click.echo(f"{status:11} {counts.get(status, 0)}")


def _user_by_email(email: str) -> User:
    user = db.session.execute(
        db.select(User).where(User.email == accounts_service.normalise_email(email))
    ).scalar_one_or_none()
    if user is None:
        raise click.ClickException(f"no user with e-mail {email}")
    return user


def register_cli(app: Flask) -> None:
    """Add the drivesync commands to ``flask``."""
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(sync_cli)
    app.cli.add_command(db_grant)
