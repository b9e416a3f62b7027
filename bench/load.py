"""Benchmark: the settings page and the progress partial under load, beside a static file.

gunicorn with the repository's gunicorn.conf.py and 4 workers, on PostgreSQL as the app role
under row-level security. 50 signed-in users, each with 1,000 files (100 waiting, a run in
progress), open the settings page and poll the progress partial back to back (locust,
``bench/locustfile.py``); in the same run, as many users fetch a static file from the same
gunicorn. Prints each request type's throughput, p50/p95 and errors, and the ratio of the
pages' throughput to the static file's. Targets: ratio >= 0.5, p95 < 100 ms, no errors.
Exits 1 when a target is missed.

The database is REPLACED (schema dropped, migrated, granted): point it at a scratch database.

    .venv/bin/python bench/load.py --owner-url postgresql+psycopg://owner@127.0.0.1/scratch \\
        --app-url postgresql+psycopg://app@127.0.0.1/scratch [--users 50] [--seconds 30]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pg_scale import reset_seed_users  # noqa: E402

PASSWORD = "bench-load-password"  # noqa: S105 - a throwaway account in a scratch database


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gunicorn(app_url: str, tmp: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """Start gunicorn (repository config) on a free loopback port; return it and its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "HOME": str(tmp),
        "DRIVESYNC_DATABASE_URL": app_url,
        "DRIVESYNC_SECRET_KEY": "l" * 40,
        "DRIVESYNC_STORAGE_DIR": str(tmp / "storage"),
        "DRIVESYNC_INSTANCE_DIR": str(tmp / "instance"),
        "DRIVESYNC_TASK_BACKEND": "thread",
        "DRIVESYNC_LOGIN_RATE_LIMIT": "10000 per minute",
        "DRIVESYNC_LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }
    (tmp / "metrics").mkdir()
    (tmp / "storage").mkdir()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py",
         "--no-control-socket", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "wsgi:app"],
        cwd=ROOT, env=env, stdout=open(tmp / "access.log", "w"),  # noqa: SIM115
        stderr=open(tmp / "gunicorn.log", "w"),  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("gunicorn did not become ready; see " + str(tmp / "gunicorn.log"))


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(url: str, emails: list[str]) -> list[str]:
    """Sign each user in through the form, one after another; return their Cookie headers."""
    cookies = []
    for email in emails:
        with requests.Session() as s:
            token = _CSRF.search(s.get(url + "/login", timeout=30).text).group(1)
            r = s.post(url + "/login", data={"csrf_token": token, "email": email,
                       "password": PASSWORD}, allow_redirects=False, timeout=30)  # fmt: skip
            if r.status_code not in (302, 303):
                raise SystemExit(f"sign-in of {email} failed: {r.status_code}")
            cookies.append("; ".join(f"{k}={v}" for k, v in s.cookies.items()))
    return cookies


def main() -> int:
    """Seed, start gunicorn, run locust, print the table; exit 1 if a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--owner-url", default=os.environ.get("DRIVESYNC_TEST_POSTGRES_URL", ""))
    ap.add_argument("--app-url", default=os.environ.get("DRIVESYNC_TEST_POSTGRES_APP_URL", ""))
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--wait", type=float, default=0.0,
                    help="seconds each user waits between requests (0: back to back; 1: htmx's "
                    "polling pace, for latency at a realistic load)")  # fmt: skip
    args = ap.parse_args()
    if not args.owner_url or not args.app_url:
        ap.error("--owner-url and --app-url (or DRIVESYNC_TEST_POSTGRES_*) are required")
    tmp = Path(tempfile.mkdtemp(prefix="drivesync-load-"))
    print(f"seeding {args.users} users x {args.files} files …", flush=True)
    emails = reset_seed_users(args.owner_url, args.app_url, args.users, args.files, PASSWORD)
    server, url = start_gunicorn(args.app_url, tmp, args.workers)
    try:
        print("signing the users in …", flush=True)
        env = {**os.environ, "BENCH_COOKIES": "\n".join(sign_in(url, emails)),
               "BENCH_WAIT": str(args.wait)}  # fmt: skip
        total = 2 * args.users
        subprocess.run(
            [str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "bench/locustfile.py"),
             "--headless", "--host", url, "-u", str(total), "-r", str(total),
             "-t", f"{args.seconds}s", "--csv", str(tmp / "load"), "--only-summary",
             "--loglevel", "WARNING", "SettingsUser", "StaticUser"],
            env=env, check=False, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=60)
    with open(tmp / "load_stats.csv") as fh:
        stats = {row["Name"]: row for row in csv.DictReader(fh)}
    failed = False
    print(f"\n{'request':22} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'errors':>7}")
    for name in ("settings page", "progress partial", "static file"):
        row = stats[name]
        rps, p95 = float(row["Requests/s"]), float(row["95%"])
        errors = int(row["Failure Count"])
        print(f"{name:22} {rps:>8.1f} {float(row['50%']):>7.0f} {p95:>7.0f} {errors:>7}")
        if errors:
            print(f"  FAIL: {name}: {errors} errors")
            failed = True
        if p95 >= 100:
            print(f"  FAIL: {name}: p95 {p95:.0f} ms (target < 100 ms)")
            failed = True
    pages = float(stats["settings page"]["Requests/s"]) + float(
        stats["progress partial"]["Requests/s"]
    )
    static = float(stats["static file"]["Requests/s"])
    ratio = pages / static if static else 0.0
    print(f"\npages (settings + partial) {pages:.1f} req/s, static {static:.1f} req/s: "
          f"ratio {ratio:.2f} (target >= 0.5)")  # fmt: skip
    if args.wait:
        print("  (with --wait the users pace themselves: the ratio reflects the task mix only)")
    elif ratio < 0.5:
        print("  FAIL: the pages' throughput is under half the static file's")
        failed = True
    print(f"({args.users} + {args.users} users, wait {args.wait} s, {args.workers} workers, "
          f"{args.seconds} s, load average {os.getloadavg()[0]:.1f}; "
          f"logs in {tmp})")  # fmt: skip
    print("targets: ratio >= 0.5, p95 < 100 ms, no errors —", "missed" if failed else "met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
