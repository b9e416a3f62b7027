"""Flask commands: users, tokens, sync."""

from __future__ import annotations

import re

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import text

from .extensions import db
from .services import accounts as accounts_service
from .services.errors import ValidationError
from .vault import new_key

ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

users_cli = AppGroup("users", help="Manage user accounts.")
tokens_cli = AppGroup("tokens", help="Manage OAuth token encryption keys.")


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
def db_grant(role: str) -> None:
    """Grant the app's PostgreSQL ROLE what it needs on the schema (run as the owner)."""
    if db.engine.dialect.name != "postgresql":
        raise click.ClickException("db-grant is for PostgreSQL; SQLite has no roles")
    if not ROLE_RE.match(role):
        raise click.ClickException("ROLE must be a plain PostgreSQL identifier")
    with db.engine.begin() as conn:
        # The app role may read and write rows (RLS still applies) but own nothing.
        conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        conn.execute(text(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        ))
        conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"))
        conn.execute(text(f"REVOKE ALL ON TABLE alembic_version FROM {role}"))
    click.echo(f"granted {role} row access on the drivesync schema")


def register_cli(app: Flask) -> None:
    """Add the drivesync commands to ``flask``."""
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(db_grant)
