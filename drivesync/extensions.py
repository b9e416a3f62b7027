"""Flask extensions, created unbound and wired in ``create_app``."""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import Engine, MetaData, event
from sqlalchemy.orm import DeclarativeBase

logger = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations get stable constraint names."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)

# Models subclass ``Model``. At run time it is ``db.Model``, the class Flask-SQLAlchemy builds
# from ``Base`` (adding its bind and query helpers); its stubs type that attribute as a value, so
# mypy could not take it as a base class. Type-check models against ``Base``, their real shape.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


def tune_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    """Put each new SQLite connection in WAL mode with ``synchronous=NORMAL``.

    With the default rollback journal a writer blocks every reader and each commit syncs the
    disk several times; sync threads then wait on each other's locks in SQLite's busy handler,
    which sleeps in steps of up to 100 ms (four users syncing at once spent 20-30 ms per file
    in it). In WAL mode readers never wait for the writer and a commit appends to the log.
    ``NORMAL`` is what SQLite recommends with WAL (https://www.sqlite.org/pragma.html#pragma_synchronous,
    https://www.sqlite.org/wal.html): the database stays consistent after a crash; a power cut
    may lose the last commits, never corrupt it. PostgreSQL, for production, is not touched.
    """
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    try:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # in-memory databases stay "memory"
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError as exc:  # e.g. a read-only file: keep its journal mode
        logger.warning("SQLite: could not switch to WAL mode: %s", exc)


def install_sqlite_tuning() -> None:
    """Apply ``tune_sqlite`` to every engine's new connections (idempotent)."""
    if not event.contains(Engine, "connect", tune_sqlite):
        event.listen(Engine, "connect", tune_sqlite)
