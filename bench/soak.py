"""Soak in the production topology: nobody presses anything, and every file still arrives.

One machine, the production pieces: gunicorn (gthread) serving the app, a Celery worker and
``celery beat`` on a private Redis, PostgreSQL with the app connecting as the unprivileged role
under row-level security, and the OneDrive emulator over TLS. Users sign in and connect through
the real OAuth flow (PKCE, the emulator's consent page), upload files with automatic sync on, and
never press Sync All. Meanwhile the soak injects, one after another: a 429 storm, 503 bursts,
fragments dropped mid-body, responses lost after a fragment was stored, TLS connections reset,
expired access tokens, the worker SIGKILLed (and restarted) in the middle of uploads, and a
Redis restart (no persistence, so its queue is lost).

It passes when every file is on OneDrive exactly once, byte-identical (quickXorHash compared
with the library's), no file is left ``syncing``/``error``/``not_synced``, and no user action
was needed. Run it (needs PostgreSQL on 127.0.0.1:5432 as set up by ``bin/services``, and
``redis-server``)::

    .venv/bin/python bench/soak.py                  # 3 users x 16 files in 8 waves (24 of 12 MiB)
    .venv/bin/python bench/soak.py --users 2 --files 8 --big-mib 6 --timeout 300

It prints a timeline and a verdict, and exits non-zero when a file is missing, damaged,
duplicated or stuck.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drivesync.graph.quickxor import QuickXorHash  # noqa: E402
from onedrive_emulator.client import EmulatorAdmin  # noqa: E402
from onedrive_emulator.server import EmulatorServer  # noqa: E402

PG = "127.0.0.1:5432"
CLIENT_ID = "drivesync-soak"
PASSWORD = "soak-password-" + secrets.token_hex(4)


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def log(start: float, message: str) -> None:
    """Print one timeline line."""
    print(f"[{time.monotonic() - start:6.1f}s] {message}", flush=True)


@dataclass
class Topology:
    """The processes of one soak and what they share."""

    tmp: Path
    db_name: str
    redis_port: int
    web_port: int
    emulator: EmulatorServer
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The environment every drivesync process gets (development config, production parts)."""
        emu = self.emulator.url
        bundle = self.emulator.bundle_file or ""
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DRIVESYNC_DATABASE_URL": f"postgresql+psycopg://drivesync_app@{PG}/{self.db_name}",
            "DRIVESYNC_INSTANCE_DIR": str(self.tmp / "instance"),
            "DRIVESYNC_STORAGE_DIR": str(self.tmp / "storage"),
            "DRIVESYNC_TASK_BACKEND": "celery",
            "DRIVESYNC_CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "DRIVESYNC_RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{self.redis_port}/1",
            "DRIVESYNC_MS_CLIENT_ID": CLIENT_ID,
            "DRIVESYNC_MS_CLIENT_SECRET": "soak-secret",
            "DRIVESYNC_MS_AUTHORITY": emu,
            "DRIVESYNC_GRAPH_URL": emu + "/v1.0",
            "DRIVESYNC_EMULATOR_URL": emu,
            "DRIVESYNC_UPLOAD_FRAGMENT_MB": "5",
            "DRIVESYNC_AUTOSYNC_DEBOUNCE_SECONDS": "2",
            "DRIVESYNC_SCHEDULER_INTERVAL_SECONDS": "2",
            "DRIVESYNC_RUN_REQUEUE_SECONDS": "10",
            "DRIVESYNC_SYNC_STALE_SECONDS": "15",
            "DRIVESYNC_SYNC_RETRY_BASE_SECONDS": "3",
            "DRIVESYNC_LOGIN_RATE_LIMIT": "1000 per minute",
            "REQUESTS_CA_BUNDLE": bundle,
            "SSL_CERT_FILE": bundle,
            "PROMETHEUS_MULTIPROC_DIR": str(self.tmp / "metrics"),
        }

    def flask(self, *args: str, owner: bool = False) -> str:
        """Run a ``flask`` CLI command (as the owner role when asked); return its output."""
        env = self.env
        if owner:
            env["DRIVESYNC_DATABASE_URL"] = (
                f"postgresql+psycopg://drivesync_owner@{PG}/{self.db_name}"
            )
        out = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", *args],
            env=env, cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.returncode:
            raise RuntimeError(f"flask {' '.join(args)} failed:\n{out.stderr[-2000:]}")
        return out.stdout

    def start(self, name: str) -> None:
        """Start ``web``, ``worker``, ``beat`` or ``redis``."""
        logfile = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        if name == "redis":
            args = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no"]  # fmt: skip
        elif name == "web":
            args = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                    f"127.0.0.1:{self.web_port}", "--workers", "2", "wsgi:app"]  # fmt: skip
        elif name == "worker":
            args = [sys.executable, "-m", "celery", "-A", "wsgi.celery_app", "worker",
                    "--loglevel=INFO", "--pool=threads", "--concurrency=4",
                    "--without-gossip", "--without-mingle"]  # fmt: skip
        else:
            args = [sys.executable, "-m", "celery", "-A", "wsgi.celery_app", "beat",
                    "--loglevel=INFO", "-s", str(self.tmp / "beat-schedule")]  # fmt: skip
        self.procs[name] = subprocess.Popen(
            args, env=self.env, cwd=ROOT, stdout=logfile, stderr=subprocess.STDOUT
        )
        if name == "redis":
            wait_for_port(self.redis_port)
        if name == "web":
            wait_for_port(self.web_port, 60)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one process and wait for it."""
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        """Stop every process (gently, then firmly)."""
        for name in ("beat", "worker", "web", "redis"):
            self.kill(name, signal.SIGTERM)


def psql(sql: str) -> None:
    """Run SQL as the postgres superuser on the maintenance database."""
    with psycopg.connect(f"postgresql://postgres@{PG}/postgres", autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # our own constant SQL


@contextlib.contextmanager
def topology(users: int) -> Iterator[Topology]:
    """Bring up the whole production topology on this machine; tear it down afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="drivesync-soak-"))
    db_name = f"drivesync_soak_{os.getpid()}"
    web_port = free_port()
    callback = f"http://127.0.0.1:{web_port}/settings/onedrive/callback"
    emulator = EmulatorServer(tls=True, clients=[(CLIENT_ID, "soak-secret", [callback])]).start()
    os.environ["REQUESTS_CA_BUNDLE"] = emulator.bundle_file or ""
    topo = Topology(tmp, db_name, free_port(), web_port, emulator)
    psql(f"CREATE DATABASE {db_name} OWNER drivesync_owner")
    try:
        (tmp / "metrics").mkdir()
        topo.flask("db", "upgrade", owner=True)
        topo.flask("db-grant", "drivesync_app", owner=True)
        for name in ("redis", "web", "worker", "beat"):
            topo.start(name)
        yield topo
    finally:
        topo.stop_all()
        emulator.stop()
        with contextlib.suppress(psycopg.Error):
            psql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        if os.environ.get("SOAK_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def csrf(html: str) -> str:
    """Return the first CSRF token of a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:300]
    return match.group(1)


def sign_up_and_connect(topo: Topology, index: int, admin: EmulatorAdmin) -> requests.Session:
    """Create an account (CLI), sign in, connect a fresh OneDrive account; return the session."""
    email = f"soak{index}@drivesync.test"
    ms_email = f"soak{index}@contoso.example"
    topo.flask("users", "create", email, "--password", PASSWORD)
    admin.add_account(ms_email, f"Soak {index}", "business" if index % 2 else "personal")
    web = f"http://127.0.0.1:{topo.web_port}"
    s = requests.Session()
    page = s.get(f"{web}/login", timeout=30)
    r = s.post(f"{web}/login", data={"csrf_token": csrf(page.text), "email": email,
               "password": PASSWORD}, timeout=30, allow_redirects=False)  # fmt: skip
    assert r.status_code in (302, 303), f"sign-in failed: {r.status_code}"
    page = s.get(f"{web}/settings/onedrive/", timeout=30)
    r = s.post(f"{web}/settings/onedrive/connect", data={"csrf_token": csrf(page.text)},
               timeout=30, allow_redirects=False)  # fmt: skip
    assert r.status_code == 303, f"connect failed: {r.status_code}"
    with requests.Session() as browser:  # the user on Microsoft's (the emulator's) pages
        consent = browser.get(r.headers["Location"], timeout=30)
        request_id = re.search(r'name="request_id" value="([^"]+)"', consent.text)
        assert request_id, consent.text[:300]
        back = browser.post(consent.url, data={"request_id": request_id.group(1),
                            "account": ms_email, "action": "accept"},
                            allow_redirects=False, timeout=30)  # fmt: skip
    r = s.get(back.headers["Location"], timeout=60, allow_redirects=False)
    assert r.status_code in (302, 303), f"callback failed: {r.status_code}"
    s.ms_email = ms_email  # type: ignore[attr-defined]
    return s


def make_files(count: int, big: int, big_mib: int, seed: int) -> list[tuple[str, bytes]]:
    """Return ``count`` files: ``big`` of ``big_mib`` MiB (several fragments), the rest small."""
    files = []
    for i in range(count):
        size = big_mib * 1024 * 1024 + 12345 if i < big else 64 * 1024 + i
        files.append((f"soak-{seed}-{i:02d}.bin", os.urandom(size)))
    return files


def upload(topo: Topology, s: requests.Session, files: list[tuple[str, bytes]]) -> None:
    """Upload the files through the library page (multipart, CSRF), a few per request."""
    web = f"http://127.0.0.1:{topo.web_port}"
    for start in range(0, len(files), 4):
        token = csrf(s.get(f"{web}/library/", timeout=30).text)
        parts = [("files", (name, data, "application/octet-stream"))
                 for name, data in files[start:start + 4]]  # fmt: skip
        r = s.post(f"{web}/library/upload", data={"csrf_token": token}, files=parts, timeout=300,
                   allow_redirects=False)  # fmt: skip
        assert r.status_code in (302, 303), f"upload failed: {r.status_code} {r.text[:200]}"


def states(db_name: str) -> dict[str, int]:
    """Count files per sync state (read as the superuser: a check, not the app)."""
    with psycopg.connect(f"postgresql://postgres@{PG}/{db_name}") as conn:
        rows = conn.execute(
            "SELECT onedrive_sync_status, count(*) FROM files GROUP BY 1"
        ).fetchall()
    return {str(k): int(v) for k, v in rows}


def wait_until_sending(db_name: str, names: list[str], timeout: float) -> None:
    """Wait until one of the files called ``names`` has bytes on the wire (or got there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(f"postgresql://postgres@{PG}/{db_name}") as conn:
            row = conn.execute(
                "SELECT count(*) FROM files WHERE original_name = ANY(%s) AND ("
                "(onedrive_sync_status = 'syncing' AND bytes_sent > 0)"
                " OR onedrive_sync_status IN ('synced', 'error'))",
                (names,),
            ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.1)


def waiting_for_user(db_name: str) -> int:
    """Count files that wait for the user (a permanent or user failure, or a conflict)."""
    with psycopg.connect(f"postgresql://postgres@{PG}/{db_name}") as conn:
        row = conn.execute(
            "SELECT count(*) FROM files WHERE onedrive_sync_status = 'conflict' "
            "OR (onedrive_sync_status = 'error' AND failure_kind IN ('permanent', 'user'))"
        ).fetchone()
    return int(row[0]) if row else 0


def qxh(data: bytes) -> str:
    """Return the quickXorHash of ``data`` (base64)."""
    h = QuickXorHash()
    h.update(data)
    return h.b64digest()


FAULTS: list[tuple[str, Callable[[Topology, EmulatorAdmin], None]]] = [
    ("429 storm (20 requests)", lambda t, a: a.throttle(count=20, retry_after=1)),
    ("503 burst (8 requests)", lambda t, a: a.fail(503, 8, retry_after=1)),
    ("fragment dropped mid-body (x2)", lambda t, a: a.drop_connection(2)),
    ("response lost after the fragment was stored", lambda t, a: a.lose_response(1)),
    ("TLS connection reset mid-fragment", lambda t, a: a.reset_connection(1)),
    ("access tokens expire in 1 s", lambda t, a: a.expire_access_tokens(1)),
]


def main() -> int:
    """Run the soak; return 0 when every file arrived intact, once, with no user action."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--files", type=int, default=16, help="files per user (spread over 8 waves)")
    p.add_argument("--big", type=int, default=1, help="large files per user and wave (0 or 1)")
    p.add_argument("--big-mib", type=int, default=12)
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args()
    if args.users < 1 or args.files < 1 or args.big not in (0, 1):
        p.error("need at least one user and file, and --big 0 or 1")
    if not shutil.which("redis-server"):
        p.error("redis-server is not installed")
    start = time.monotonic()
    with topology(args.users) as topo:
        admin = EmulatorAdmin(topo.emulator.url)
        log(start, f"topology up: gunicorn :{topo.web_port}, worker, beat, redis "
            f":{topo.redis_port}, PostgreSQL {topo.db_name} (app role, RLS), "
            f"emulator {topo.emulator.url}")  # fmt: skip
        sessions = [sign_up_and_connect(topo, i, admin) for i in range(args.users)]
        log(start, f"{args.users} users signed in and connected through OAuth (PKCE)")
        # One wave of uploads per fault, each wave with a large file (several fragments), and
        # each fault injected once that wave's files are being sent: the faults hit live runs.
        expected: dict[str, dict[str, str]] = {s.ms_email: {} for s in sessions}  # type: ignore[attr-defined]
        waves = [*FAULTS, ("worker SIGKILLed mid-upload, restarted", None),
                 ("Redis restarted during the debounce (queue lost)", None)]  # fmt: skip
        per_wave = max(1, args.files // len(waves))
        total = 0
        for number, (name, inject) in enumerate(waves):
            names: list[str] = []
            for i, s in enumerate(sessions):
                files = make_files(per_wave, args.big, args.big_mib, i * 100 + number)
                expected[s.ms_email].update({n: qxh(d) for n, d in files})  # type: ignore[attr-defined]
                upload(topo, s, files)
                names += [n for n, _ in files]
                total += len(files)
            if name.startswith("Redis"):
                topo.kill("redis")
                topo.start("redis")
            else:
                wait_until_sending(topo.db_name, names, timeout=60)
                if inject is not None:
                    inject(topo, admin)
                else:
                    topo.kill("worker")
                    time.sleep(3)
                    topo.start("worker")
            log(start, f"wave {number + 1}: fault: {name}   states {states(topo.db_name)}")
        survived = [name for name, _ in waves]
        log(start, f"{total} files uploaded in {len(waves)} waves; nobody pressed anything")
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            now = states(topo.db_name)
            if now.get("synced", 0) == total:
                break
            time.sleep(2)
        final = states(topo.db_name)
        log(start, f"final states {final}")
        intact = damaged = missing = duplicates = 0
        for ms_email, files in expected.items():
            items = [i for i in admin.list_items(ms_email) if not i["folder"]]
            by_name: dict[str, list[dict[str, Any]]] = {}
            for item in items:
                by_name.setdefault(item["name"], []).append(item)
            for name, digest in files.items():
                found = by_name.get(name, [])
                if not found:
                    missing += 1
                elif found[0]["quickXorHash"] != digest:
                    damaged += 1
                else:
                    intact += 1
            duplicates += sum(len(v) - 1 for v in by_name.values()) + len(
                [n for n in by_name if n not in files]
            )
        stuck = total - final.get("synced", 0)
        clicks = waiting_for_user(topo.db_name)
        print()
        print(f"files intact on OneDrive : {intact} of {total}")
        print(f"missing / damaged        : {missing} / {damaged}")
        print(f"duplicates on OneDrive   : {duplicates}")
        print(f"not synced at the end    : {stuck}")
        print(f"waiting for the user     : {clicks}")
        print(f"faults injected          : {len(survived)} ({', '.join(survived)})")
        print(f"elapsed                  : {time.monotonic() - start:.0f} s")
        ok = intact == total and not (missing or damaged or duplicates or stuck or clicks)
        print("verdict                  :", "PASS" if ok else "FAIL")
        if not ok:
            print(f"logs in {topo.tmp} (set SOAK_KEEP=1 to keep them)")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
