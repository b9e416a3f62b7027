"""Benchmark: the settings page, its progress partial and the pending query at 10 and at
1,000,000 file rows on PostgreSQL, under row-level security as the app role.

Phase 1: one user ("small": 10 files waiting, a run in progress) alone in the database, 10 file
rows in all. Phase 2: ``COPY`` adds 999 more users with 999,990 files between them (1,000,000
rows; one of them, "large", has a run in progress and 100 files waiting). Phase 3 deletes them
again and measures the 10-row case once more (A B A, against load drifting on a shared
machine). The same pages are measured for the same small user in every phase, through the app
(test client, app role, RLS), and printed with their SQL statement counts, median times and
``EXPLAIN (ANALYZE, BUFFERS)`` plans. Targets: the same statement count; a time ratio (1M / 10)
under 1.3x; the pending query under 5 ms. Exits 1 when a target is missed.

The database is REPLACED (schema dropped, migrated, granted): point it at a scratch database.

    .venv/bin/python bench/pg_scale.py \\
        --owner-url postgresql+psycopg://drivesync_owner@127.0.0.1:5432/drivesync_t_ops \\
        --app-url postgresql+psycopg://drivesync_app@127.0.0.1:5432/drivesync_t_ops
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, event, make_url, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivesync import create_app  # noqa: E402
from drivesync.extensions import db  # noqa: E402
from drivesync.scope import user_scope  # noqa: E402
from drivesync.services import sync  # noqa: E402

TOTAL_ROWS = 1_000_000
USERS = 1_000
PAGES = (
    ("settings page", "/settings/onedrive/", {}),
    ("progress partial", "/settings/onedrive/progress", {"HX-Request": "true"}),
)
FILE_COLUMNS = (
    "owner_id", "original_name", "stored_path", "size", "mime_type", "content_hash",
    "quick_xor_hash", "version", "created_at", "updated_at", "onedrive_id",
    "onedrive_sync_status", "bytes_sent", "sync_run_id",
)  # fmt: skip


def _flask(url: str, *args: str) -> None:
    env = {**os.environ, "DRIVESYNC_DATABASE_URL": url, "DRIVESYNC_SECRET_KEY": "p" * 40}
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                   check=True, capture_output=True)  # fmt: skip


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def reset_schema(owner_url: str, app_url: str) -> None:
    """Drop and re-create the schema, migrate it as the owner, grant the app role."""
    engine = create_engine(owner_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    _flask(owner_url, "db", "upgrade")
    _flask(owner_url, "db-grant", str(make_url(app_url).username))


def seed(
    owner_url: str,
    users: list[tuple[str, int, int, bool]],
    password_hash: str = "!bench-no-login",  # noqa: S107 - an unusable hash: no sign-in
) -> dict[str, int]:
    """COPY users, an integration and runs each, and their files; return {email: user id}.

    ``users``: (email, files, files waiting, run in progress). The owner is subject to FORCEd
    RLS, which refuses COPY; as the RLS migration says, a bulk load lifts FORCE inside its own
    transaction and restores it before commit.
    """
    now = datetime.now(UTC)
    rng = random.Random(7)
    ids: dict[str, int] = {}
    with psycopg.connect(_libpq(owner_url)) as conn:
        for table in ("files", "sync_runs", "integrations"):
            conn.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        with conn.cursor() as cur:
            for email, *_ in users:
                cur.execute(
                    "INSERT INTO users (email, password_hash, created_at) VALUES (%s, %s, %s) "
                    "RETURNING id",
                    (email, password_hash, now),
                )
                ids[email] = cur.fetchone()[0]
            with cur.copy(
                "COPY integrations (user_id, provider, status, account_name, account_email, "
                "drive_type, folder_path, folder_id, quota_used, quota_total, connected_at) "
                "FROM STDIN"
            ) as copy:
                for email, *_ in users:
                    copy.write_row((ids[email], "onedrive", "active", "Bench", email, "personal",
                                    "drivesync", "F", 1, 10, now))  # fmt: skip
            runs: dict[int, int] = {}
            for email, _n, waiting, running in users:
                uid = ids[email]
                for k in range(3):  # some finished history per user
                    cur.execute(
                        "INSERT INTO sync_runs (user_id, status, total, succeeded, failed, "
                        "bytes_total, bytes_done, created_at, started_at, finished_at) "
                        "VALUES (%s, 'done', 10, 10, 0, 1000, 1000, %s, %s, %s)",
                        (uid, now - timedelta(days=k + 1), now - timedelta(days=k + 1), now),
                    )
                if running:
                    cur.execute(
                        "INSERT INTO sync_runs (user_id, status, total, succeeded, failed, "
                        "bytes_total, bytes_done, created_at, started_at) "
                        "VALUES (%s, 'running', %s, 0, 0, %s, 0, %s, %s) RETURNING id",
                        (uid, waiting, waiting * 1000, now, now),
                    )
                    runs[uid] = cur.fetchone()[0]
            with cur.copy(f"COPY files ({', '.join(FILE_COLUMNS)}) FROM STDIN") as copy:
                for email, n, waiting, _running in users:
                    uid = ids[email]
                    run_id = runs.get(uid)
                    for k in range(n):
                        if k < waiting:
                            status = "syncing" if run_id and k < 4 else "not_synced"
                        else:
                            status = "error" if rng.random() < 0.01 else "synced"
                        copy.write_row((
                            uid, f"document-{k:05d}.pdf", f"{uid:08x}{k:024x}", 1000 + k,
                            "application/pdf", "0" * 64, "A" * 28, 1,
                            now - timedelta(seconds=k), now,
                            None if status in ("not_synced", "syncing") else f"ITEM{uid}-{k}",
                            status, 0, run_id if k < waiting else None,
                        ))  # fmt: skip
        for table in ("files", "sync_runs", "integrations"):
            conn.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        conn.commit()
    with psycopg.connect(_libpq(owner_url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE files")
        conn.execute("VACUUM ANALYZE sync_runs")
        conn.execute("VACUUM ANALYZE integrations")
        conn.execute("VACUUM ANALYZE users")
    return ids


def reset_seed_users(
    owner_url: str, app_url: str, users: int, files: int, password: str
) -> list[str]:
    """Replace the database with ``users`` users of ``files`` files each (100 waiting, a run in
    progress), all signing in with ``password``; return their e-mails (bench/load.py)."""
    from drivesync.services import accounts

    reset_schema(owner_url, app_url)
    rows = [(f"load{i:03d}@bench.example", files, min(100, files), True) for i in range(users)]
    seed(owner_url, rows, password_hash=accounts._hasher.hash(password))
    return [email for email, *_ in rows]


class Recorder:
    """Count (and keep) the SQL statements the app sends."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.statements.append((statement, parameters))

    def queries(self) -> list[tuple[str, Any]]:
        """Return the statements worth a plan: reads of the app's tables."""
        return [
            (s, p)
            for s, p in self.statements
            if s.lstrip().upper().startswith("SELECT") and "set_config" not in s
        ]


SMALL = "small@bench.example"
PASSWORD = "bench-scale-password"  # noqa: S105 - a throwaway account in a scratch database


def sign_in(client) -> None:
    """Sign the small user in through the form (whatever the session machinery)."""
    r = client.post("/login", data={"email": SMALL, "password": PASSWORD})
    assert r.status_code in (302, 303), ("sign-in", r.status_code)


def measure_page(app, client, uid: int, path: str, headers: dict, rec: Recorder) -> float:
    """Request ``path`` as the signed-in user once; return the seconds it took."""
    rec.statements.clear()
    t0 = time.perf_counter()
    r = client.get(path, headers=headers)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, (path, r.status_code)
    return elapsed


def measure_pending(app, uid: int, limit: int) -> float:
    """Run the pending query (``sync.pending_files``) once as ``uid``; return the seconds."""
    with app.app_context(), user_scope(uid):
        t0 = time.perf_counter()
        sync.pending_files(uid, limit)
        elapsed = time.perf_counter() - t0
        db.session.rollback()
    return elapsed


def explain(app, uid: int, queries: list[tuple[str, Any]]) -> list[str]:
    """Return EXPLAIN (ANALYZE, BUFFERS) of each query, run as the app role in ``uid``'s scope."""
    plans = []
    with app.app_context(), db.engine.connect() as conn:
        conn.exec_driver_sql("SELECT set_config('app.user_id', %(u)s, false)", {"u": str(uid)})
        for statement, params in queries:
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
            plans.append("\n".join(r[0] for r in rows))
        conn.exec_driver_sql("SELECT set_config('app.user_id', '', false)")
        conn.rollback()
    return plans


def pending_sql(app, uid: int, limit: int) -> tuple[str, Any]:
    """Return the compiled pending query with its parameters."""
    with app.app_context():
        stmt = sync._pending_query(uid).order_by(sync.File.created_at, sync.File.id).limit(limit)
        compiled = stmt.compile(db.engine, compile_kwargs={"render_postcompile": True})
        return str(compiled), compiled.params


def run_phase(app, uid: int, rounds: int, limit: int, rec: Recorder) -> dict[str, Any]:
    """Measure both pages and the pending query for ``uid``; return counts, times and plans."""
    client = app.test_client()
    sign_in(client)
    out: dict[str, Any] = {}
    for label, path, headers in PAGES:
        for _ in range(5):  # warm-up: templates, caches, plans
            measure_page(app, client, uid, path, headers, rec)
        times = [measure_page(app, client, uid, path, headers, rec) for _ in range(rounds)]
        out[label] = {
            "statements": len(rec.statements),
            "ms": statistics.median(times) * 1000,
            "min": min(times) * 1000,
            "plans": explain(app, uid, rec.queries()),
        }
    for _ in range(5):
        measure_pending(app, uid, limit)
    times = [measure_pending(app, uid, limit) for _ in range(rounds)]
    out["pending query"] = {
        "statements": 1,
        "ms": statistics.median(times) * 1000,
        "min": min(times) * 1000,
        "plans": explain(app, uid, [pending_sql(app, uid, limit)]),
    }
    return out


def main() -> int:
    """Seed, measure, print; exit 1 if a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--owner-url", default=os.environ.get("DRIVESYNC_TEST_POSTGRES_URL", ""))
    ap.add_argument("--app-url", default=os.environ.get("DRIVESYNC_TEST_POSTGRES_APP_URL", ""))
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--plans", choices=("all", "large", "none"), default="large",
                    help="print plans for both phases, the 1M phase only, or none")  # fmt: skip
    args = ap.parse_args()
    if not args.owner_url or not args.app_url:
        ap.error("--owner-url and --app-url (or DRIVESYNC_TEST_POSTGRES_*) are required")
    tmp = tempfile.mkdtemp(prefix="drivesync-pgscale-")
    print("resetting and migrating the database …", flush=True)
    reset_schema(args.owner_url, args.app_url)
    app = create_app({"TESTING": True, "SECRET_KEY": "p" * 40, "SQLALCHEMY_DATABASE_URI":
                      args.app_url, "INSTANCE_DIR": tmp, "STORAGE_DIR": tmp,
                      "TASK_BACKEND": "eager", "WTF_CSRF_ENABLED": False,
                      "RATELIMIT_ENABLED": False})  # fmt: skip
    limit = app.config["PENDING_LIST_LIMIT"]
    rec = Recorder()
    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", rec)

    from drivesync.services import accounts

    ids = seed(args.owner_url, [(SMALL, 10, 10, True)], accounts._hasher.hash(PASSWORD))
    small = ids[SMALL]
    print("phase 1: 10 file rows", flush=True)
    phase1 = run_phase(app, small, args.rounds, limit, rec)

    others = TOTAL_ROWS - 10
    per_user, extra = divmod(others, USERS - 1)
    users = [
        (f"user{i:04d}@bench.example", per_user + (1 if i < extra else 0), 100 if i == 0 else 50,
         i == 0)
        for i in range(USERS - 1)
    ]  # fmt: skip
    t0 = time.perf_counter()
    seed(args.owner_url, users)
    with psycopg.connect(_libpq(args.owner_url)) as conn:
        conn.execute("ALTER TABLE files NO FORCE ROW LEVEL SECURITY")
        total = conn.execute("SELECT count(*) FROM files").fetchone()[0]
        conn.rollback()
    print(f"phase 2: {total:,} file rows across {USERS} users (COPY took "
          f"{time.perf_counter() - t0:.1f} s)", flush=True)  # fmt: skip
    phase2 = run_phase(app, small, args.rounds, limit, rec)
    with psycopg.connect(_libpq(args.owner_url)) as conn:
        found = conn.execute("SELECT id FROM users WHERE email = 'user0000@bench.example'")
        large = found.fetchone()[0]
    large_times = [measure_pending(app, large, limit) for _ in range(args.rounds)]
    large_pending = min(large_times)

    # Back to 10 rows and measure again (A B A): the load on a shared machine drifts, and the
    # two sizes cannot be measured side by side, so the baseline is the mean of both A phases.
    with psycopg.connect(_libpq(args.owner_url)) as conn:
        conn.execute("DELETE FROM users WHERE email LIKE 'user%@bench.example'")
        conn.commit()
    with psycopg.connect(_libpq(args.owner_url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE files")
        conn.execute("VACUUM ANALYZE sync_runs")
    print("phase 3: back to 10 file rows", flush=True)
    phase3 = run_phase(app, small, args.rounds, limit, rec)
    for label in phase1:
        for stat in ("ms", "min"):
            phase1[label][stat] = (phase1[label][stat] + phase3[label][stat]) / 2
        if phase3[label]["statements"] != phase1[label]["statements"]:
            print(f"  note: {label} changed its statement count between the 10-row phases")

    failed = False
    # Targets are judged on the fastest round (as timeit advises: slower rounds measure the
    # other processes on a shared machine, not this code); medians are printed beside them.
    print("\n(10 rows: the mean of the phases before and after 1M; times in ms, min / median)")
    print(f"{'':18} {'stmts 10':>9} {'stmts 1M':>9} {'min 10':>7} {'min 1M':>7} {'ratio':>6}"
          f" {'med 10':>7} {'med 1M':>7}")  # fmt: skip
    for label in ("settings page", "progress partial", "pending query"):
        a, b = phase1[label], phase2[label]
        ratio = b["min"] / a["min"]
        print(f"{label:18} {a['statements']:>9} {b['statements']:>9} {a['min']:>7.2f} "
              f"{b['min']:>7.2f} {ratio:>5.2f}x {a['ms']:>7.2f} {b['ms']:>7.2f}")  # fmt: skip
        if b["statements"] != a["statements"]:
            print(f"  FAIL: {label}: {a['statements']} statements at 10 rows, "
                  f"{b['statements']} at 1M")  # fmt: skip
            failed = True
        if ratio >= 1.3:
            print(f"  FAIL: {label} is {ratio:.2f}x slower at 1M rows (target < 1.3x)")
            failed = True
    print(f"pending query, a user with {per_user + 1:,} files (100 waiting) at 1M rows: "
          f"min {large_pending * 1000:.2f} ms, median "
          f"{statistics.median(large_times) * 1000:.2f} ms")  # fmt: skip
    if large_pending * 1000 >= 5:
        print("  FAIL: the pending query of the large user takes 5 ms or more")
        failed = True
    if phase2["pending query"]["min"] >= 5:
        print(f"  FAIL: the pending query takes {phase2['pending query']['min']:.2f} ms (< 5)")
        failed = True
    seq = [
        (label, plan)
        for label in phase2
        for plan in phase2[label]["plans"]
        if "Seq Scan on files" in plan or "Seq Scan on sync_runs" in plan
    ]
    for label, _plan in seq:
        print(f"  FAIL: {label}: a sequential scan of a big table at 1M rows")
        failed = True
    for name, phase in (("10 rows", phase1), ("1,000,000 rows", phase2)):
        if args.plans == "none" or (args.plans == "large" and phase is phase1):
            continue
        for label in phase:
            for i, plan in enumerate(phase[label]["plans"], 1):
                print(f"\n-- {label}, statement {i}, {name}\n{plan}")
    print("\ntargets: same statements; ratio < 1.3x; pending < 5 ms; no seq scan on files —",
          "missed" if failed else "met")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
