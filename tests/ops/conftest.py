"""Fixtures for the operations tests: migrated databases, free ports, private servers."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster of our own (initdb as the postgres OS user, pg_ctl)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins or not shutil.which("runuser"):
            pytest.skip("PostgreSQL server binaries are not installed")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="drivesync-pg-"))
        os.chmod(self.dir, 0o777)  # noqa: S103 - the postgres user must write its cluster here
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            cwd="/",
        )

    def init(self) -> PrivatePostgres:
        """Create the cluster (trust auth on loopback only)."""
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )
        return self

    def start(self) -> None:
        """Start the server on its private port and wait until it answers."""
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-l",
            str(self.dir / "log"), "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server (fast shutdown) and wait until it is gone."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )

    def destroy(self) -> None:
        """Stop if running and remove the cluster."""
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A throwaway redis-server on a free port."""

    def __init__(self) -> None:
        if not shutil.which("redis-server"):
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        """Stop the server we started (by its own PID)."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private PostgreSQL cluster, removed after the test."""
    pg = PrivatePostgres().init()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A running private Redis, stopped after the test."""
    r = PrivateRedis()
    r.start()
    yield r
    r.stop()


def dispose(app: Any) -> None:
    """Close an app's database connections (a test that builds its own app calls this)."""
    from drivesync.extensions import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


METRICS_TOKEN = "scrape-token-0123456789abcdef"


class Gunicorn:
    """gunicorn serving ``wsgi:app`` with the repository's gunicorn.conf.py, as a subprocess."""

    def __init__(self, tmp: Path, *args: str, database_url: str | None = None) -> None:
        from tests.conftest import migrate_database

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = tmp / "metrics"
        self.metrics_dir.mkdir(parents=True)
        if database_url is None:
            database_url = f"sqlite:///{tmp / 'gunicorn.sqlite3'}"
            migrate_database(database_url)
        (tmp / "storage").mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "HOME": str(tmp),
            "DRIVESYNC_DATABASE_URL": database_url,
            "DRIVESYNC_SECRET_KEY": "g" * 40,
            "DRIVESYNC_STORAGE_DIR": str(tmp / "storage"),
            "DRIVESYNC_INSTANCE_DIR": str(tmp / "instance"),
            "DRIVESYNC_TASK_BACKEND": "thread",
            "DRIVESYNC_LOG_FORMAT": "json",
            "DRIVESYNC_METRICS_TOKEN": METRICS_TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        self.stdout = open(tmp / "gunicorn.out", "w+")  # noqa: SIM115 - closed in stop()
        self.stderr = open(tmp / "gunicorn.err", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(Path(os.sys.executable).parent / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"),
             "--no-control-socket", "--bind", f"127.0.0.1:{self.port}", *args, "wsgi:app"],
            cwd=ROOT,
            env=self.env,
            stdout=self.stdout,
            stderr=self.stderr,
        )  # fmt: skip
        try:
            self.wait_ready()
        except Exception:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until /healthz answers."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stderr.seek(0)
                raise RuntimeError(f"gunicorn exited: {self.stderr.read()[-2000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError("gunicorn did not answer")

    def scrape(self) -> str:
        """Return the /metrics text."""
        import requests

        r = requests.get(
            self.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
        )
        r.raise_for_status()
        return r.text

    def stop(self) -> None:
        """Stop gunicorn gracefully (SIGTERM to the master we started)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stdout.close()
        self.stderr.close()


def sample(text: str, name: str, **labels: str) -> float:
    """Return the value of one sample in a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0
