"""Liveness and readiness for load balancers and orchestrators.

``/healthz`` answers as long as the process does (no I/O). ``/readyz`` checks what a request
needs: a database round trip, migrations at head, the storage folder writable and, with the
Celery backend, the broker. It answers 200 or 503 with the names of the failing parts only:
never an error text or a host name (it needs no sign-in, so anyone may read it).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from flask import Flask, current_app, jsonify, make_response
from flask.typing import ResponseReturnValue
from kombu import Connection
from sqlalchemy import text

from ..extensions import db
from ..web import MIGRATIONS_DIR

logger = logging.getLogger(__name__)


def healthz() -> ResponseReturnValue:
    """Answer that the process is alive."""
    return _no_store(jsonify(status="ok"), 200)


@cache
def _migration_heads(directory: str) -> frozenset[str]:
    config = Config()
    config.set_main_option("script_location", directory)
    return frozenset(ScriptDirectory.from_config(config).get_heads())


def _check_database() -> bool:
    db.session.execute(text("SELECT 1")).scalar_one()
    return True


def _check_migrations() -> bool:
    if db.engine.dialect.name == "postgresql":
        # The app role may not read alembic_version (db-grant); migration b3c1f0a9e2d4 lends it.
        query = text("SELECT * FROM drivesync_schema_version()")
    else:
        query = text("SELECT version_num FROM alembic_version")
    rows = db.session.execute(query).scalars().all()
    return frozenset(rows) == _migration_heads(str(MIGRATIONS_DIR))


def _check_storage() -> bool:
    folder = Path(current_app.config["STORAGE_DIR"])
    # A fresh install has no uploads folder until the first upload: make it, as storage would,
    # but never its parents (a missing volume must fail here, not fill the root filesystem).
    folder.mkdir(mode=0o700, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".readyz-"):
        pass
    return True


def _check_broker() -> bool:
    url = current_app.config["CELERY_BROKER_URL"]
    with Connection(url, connect_timeout=2, transport_options={"socket_timeout": 2}) as conn:
        conn.ensure_connection(max_retries=0)
    return True


def _rollback_quietly() -> None:
    try:
        db.session.rollback()
    except Exception:  # the connection is gone; the pool replaces it next time
        db.session.close()


def _checks(app: Flask) -> dict[str, Callable[[], bool]]:
    checks: dict[str, Callable[[], bool]] = {
        "database": _check_database,
        "migrations": _check_migrations,
        "storage": _check_storage,
    }
    if app.config.get("TASK_BACKEND") == "celery":
        checks["broker"] = _check_broker
    return checks


def readyz() -> ResponseReturnValue:
    """Answer 200 when every part a request needs works, else 503 naming the failing parts."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    failing = []
    for name, check in _checks(app).items():
        try:
            ok = check()
        except Exception as exc:
            # The log (for operators) names the exception class; the answer names the part only.
            logger.warning("readiness: %s failed (%s)", name, type(exc).__name__)
            ok = False
        finally:
            if name in ("database", "migrations"):
                _rollback_quietly()
        if not ok:
            failing.append(name)
    if failing:
        return _no_store(jsonify(status="unavailable", failing=failing), 503)
    return _no_store(jsonify(status="ok"), 200)


def _no_store(resp: ResponseReturnValue, status: int) -> ResponseReturnValue:
    out = make_response(resp, status)
    out.headers["Cache-Control"] = "no-store"
    return out
