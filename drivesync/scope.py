"""Which user the current database work is for, for PostgreSQL row-level security.

Requests run as the signed-in user; background jobs as the job's user. At the start of every
transaction the user id is handed to PostgreSQL with ``set_config('app.user_id', …, true)``
(transaction-local), which the RLS policies read. Services still scope every query themselves:
this is defence in depth, and SQLite has no equivalent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from flask_sqlalchemy.session import Session as AppSession
from sqlalchemy import Connection, event, text
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

_current_user: ContextVar[int | None] = ContextVar("drivesync_scope_user", default=None)


def current_scope() -> int | None:
    """Return the user id database work is scoped to, or ``None``."""
    return _current_user.get()


@contextmanager
def user_scope(user_id: int | None) -> Iterator[None]:
    """Scope database work inside the block to ``user_id``, including an open transaction."""
    token = set_scope(user_id)
    try:
        yield
    finally:
        reset_scope(token)


def set_scope(user_id: int | None) -> Token[int | None]:
    """Set the scope until reset with the returned token (for request hooks)."""
    token = _current_user.set(user_id)
    _apply_to_open_transactions()
    return token


def reset_scope(token: Token[int | None]) -> None:
    """Undo ``set_scope``."""
    _current_user.reset(token)
    _apply_to_open_transactions()


def _set_config(connection: Connection) -> None:
    uid = _current_user.get()
    connection.execute(
        text("SELECT set_config('app.user_id', :u, true)"), {"u": "" if uid is None else str(uid)}
    )


def _apply_to_open_transactions() -> None:
    """Hand a changed scope to a transaction that is already open (else it would keep the old
    user until it ends: a lookup before ``user_scope`` must not blind the work inside it)."""
    for scoped in _installed:
        try:
            if not scoped.registry.has():
                continue
            session = scoped()
        except RuntimeError:  # no app context: no session to update
            continue
        if session.in_transaction():
            connection = session.connection()
            if connection.dialect.name == "postgresql":
                _set_config(connection)


def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        _set_config(connection)


_installed: list[scoped_session[AppSession]] = []


def install(session_target: scoped_session[AppSession]) -> None:
    """Hand the scope to PostgreSQL at the start of every transaction of ``session_target``
    (a ``scoped_session``), and to its open transaction whenever the scope changes."""
    if not event.contains(session_target, "after_begin", _after_begin):
        event.listen(session_target, "after_begin", _after_begin)
    if session_target not in _installed:
        _installed.append(session_target)
