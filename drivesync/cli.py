"""Flask commands: users, tokens, sync."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import text

from . import tasks
from .extensions import db
from .models import User
from .scope import user_scope
from .services import accounts as accounts_service
from .services import audit, export, library, sync
from .services.errors import ValidationError
from .services.integrations import rotate_token_keys
from .vault import VaultError, new_key
from .web import storage

ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

users_cli = AppGroup("users", help="Manage user accounts.")
tokens_cli = AppGroup("tokens", help="Manage OAuth token encryption keys.")
sync_cli = AppGroup("sync", help="Run or inspect OneDrive syncs.")
audit_cli = AppGroup(
    "audit", help="Export or prune the audit log (run with the owner role's database URL)."
)


@users_cli.command("create")
@click.argument("email")
@click.password_option()
def create_user(email: str, password: str) -> None:
    """Create a user account."""
    try:
        user = accounts_service.create_user(email, password, actor=audit.OPERATOR)
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
        # The audit log is append-only for the app (export and prune run as the owner).
        conn.execute(text(f"REVOKE UPDATE, DELETE, TRUNCATE ON TABLE audit_events FROM {role}"))
    click.echo(f"granted {role} row access on the drivesync schema")


@tokens_cli.command("rotate-key")
def tokens_rotate_key() -> None:
    """Re-encrypt every stored token with the first key of DRIVESYNC_TOKEN_KEYS."""
    try:
        rotated, total = rotate_token_keys()
    except VaultError as e:
        raise click.ClickException(str(e)) from None
    audit.record(
        "tokens.key_rotated", user_id=None, actor=audit.OPERATOR, detail=f"{rotated} of {total}"
    )
    db.session.commit()
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


def _when(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{name} must be an ISO date or time, e.g. 2026-01-31") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@audit_cli.command("export")
@click.option("--since", help="Start (inclusive), ISO date or time; UTC unless it says.")
@click.option("--until", help="End (exclusive), ISO date or time; UTC unless it says.")
def audit_export(since: str | None, until: str | None) -> None:
    """Print audit entries in a time range as JSON lines (as the owner role: all users)."""
    for line in audit.export_lines(_when(since, "--since"), _when(until, "--until")):
        click.echo(line)


@audit_cli.command("prune")
@click.option("--days", type=int, default=None, help="Keep this many days (default: config).")
def audit_prune(days: int | None) -> None:
    """Delete audit entries older than the retention period, and expired export zips."""
    keep = days if days is not None else audit.retention_days()
    if keep < 1:
        raise click.BadParameter("--days must be at least 1")
    removed = audit.prune(keep)
    audit.record("audit.pruned", user_id=None, actor=audit.OPERATOR, detail=f"{removed} entries")
    db.session.commit()
    zips = export.purge_all_expired(storage())
    click.echo(f"deleted {removed} audit entries older than {keep} days, {zips} expired exports")


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
    app.cli.add_command(audit_cli)
