"""SQLite connections run in WAL mode with synchronous=NORMAL (extensions.tune_sqlite)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import text

from drivesync import create_app
from drivesync.extensions import db, tune_sqlite
from tests.conftest import app_config


def test_app_connections_use_wal_and_normal_sync(tmp_path: Path) -> None:
    app = create_app(app_config(tmp_path, f"sqlite:///{tmp_path / 'app.sqlite3'}"))
    with app.app_context():
        assert db.session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert db.session.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        db.session.rollback()
        db.engine.dispose()


def test_a_reader_does_not_wait_for_a_committing_writer(tmp_path: Path) -> None:
    """In WAL mode a read goes on while another connection holds the write lock and commits."""
    path = tmp_path / "w.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    tune_sqlite(writer, None)
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("INSERT INTO t VALUES (1)")
    writer.execute("BEGIN EXCLUSIVE")  # what a commit takes in rollback-journal mode
    writer.execute("UPDATE t SET x = 2")
    reader = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    tune_sqlite(reader, None)
    started = time.monotonic()
    assert reader.execute("SELECT x FROM t").fetchone() == (1,)  # the last committed value
    assert time.monotonic() - started < 0.1
    done = threading.Event()
    threading.Thread(target=lambda: (writer.execute("COMMIT"), done.set())).start()
    assert done.wait(5)
    assert reader.execute("SELECT x FROM t").fetchone() == (2,)
    reader.close()
    writer.close()


def test_in_memory_and_other_drivers_are_left_alone() -> None:
    memory = sqlite3.connect(":memory:")
    tune_sqlite(memory, None)
    assert memory.execute("PRAGMA journal_mode").fetchone() == ("memory",)
    tune_sqlite(object(), None)  # not SQLite (psycopg): nothing happens
