"""Benchmark: the OneDrive settings page and its progress partial, 10 files vs 10,000.

Two users in one database: a small library (10 files, all pending) and a large one (10,000
files, 100 pending, a run in progress). Both pages are requested side by side, in alternating
order, through the same app; the script prints the SQL statement count and median time of each
and their ratio. Targets: the statement count does not grow with the library, and the large
library's time stays under 2x the small one's.

    .venv/bin/python bench/settings_page.py [--rounds 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import event, insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivesync import create_app  # noqa: E402
from drivesync.extensions import db  # noqa: E402
from drivesync.models import File, Integration, SyncRun, User  # noqa: E402
from drivesync.scope import user_scope  # noqa: E402
from drivesync.services import accounts  # noqa: E402


def _rows(owner_id: int, start: int, stop: int, pending: int, run_id: int) -> list[dict]:
    """Return file rows ``start..stop``: the first ``pending`` wait (4 of them uploading)."""
    now = datetime.now(UTC)
    rows = []
    for k in range(start, stop):
        status = "syncing" if k < 4 else ("not_synced" if k < pending else "synced")
        rows.append(
            {
                "owner_id": owner_id,
                "original_name": f"document-{k:05d}.pdf",
                "stored_path": f"{k:032x}",
                "size": 1000 + k,
                "mime_type": "application/pdf",
                "content_hash": "0" * 64,
                "quick_xor_hash": "A" * 28,
                "created_at": now - timedelta(seconds=k),
                "updated_at": now,
                "onedrive_sync_status": status,
                "bytes_sent": 0,
                "sync_run_id": run_id if k < pending else None,
            }
        )
    return rows


def _seed(app, email: str, n: int, pending: int) -> int:
    with app.app_context():
        user = User(email=email, password_hash="!bench-no-login")  # noqa: S106
        db.session.add(user)
        db.session.commit()
        with user_scope(user.id):
            db.session.add(
                Integration(
                    user_id=user.id,
                    provider="onedrive",
                    status="active",
                    account_name="Bench",
                    account_email=email,
                    drive_type="personal",
                    folder_path="drivesync",
                    folder_id="F",
                    quota_used=1,
                    quota_total=10,
                )
            )
            run = SyncRun(
                user_id=user.id,
                status="running",
                total=pending,
                bytes_total=pending * 1000,
                started_at=datetime.now(UTC),
            )
            db.session.add(run)
            db.session.flush()
            for start in range(0, n, 2000):
                rows = _rows(user.id, start, min(n, start + 2000), pending, run.id)
                db.session.execute(insert(File), rows)
            db.session.commit()
        return user.id


def _measure(app, client, uid: int, path: str, counter: list[int]) -> tuple[int, float]:
    with app.app_context():
        key = accounts.start_session(uid)
    with client.session_transaction() as sess:
        sess["_user_id"] = key  # a server-side session key, as a real sign-in gives
        sess["_fresh"] = True
    counter[0] = 0
    t0 = time.perf_counter()
    r = client.get(path, headers={"HX-Request": "true"} if "progress" in path else {})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.status_code
    return counter[0], elapsed


def main() -> int:
    """Run the benchmark and print the table; exit 1 if a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--database-url", default="")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="drivesync-bench-")
    url = args.database_url or f"sqlite:///{tmp}/bench.sqlite3"
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "b" * 40,
            "SQLALCHEMY_DATABASE_URI": url,
            "INSTANCE_DIR": tmp,
            "STORAGE_DIR": tmp,
            "TASK_BACKEND": "eager",
            "WTF_CSRF_ENABLED": False,
        }
    )
    with app.app_context():
        db.create_all()
        counter = [0]
        event.listen(
            db.engine,
            "before_cursor_execute",
            lambda *a, **k: counter.__setitem__(0, counter[0] + 1),
        )
    small = _seed(app, "small@bench.example", 10, 10)
    large = _seed(app, "large@bench.example", 10_000, 100)
    client = app.test_client()
    failed = False
    print(f"{'page':28} {'stmts 10':>9} {'stmts 10k':>10} {'ms 10':>8} {'ms 10k':>8} {'ratio':>6}")
    for label, path in (
        ("settings page", "/settings/onedrive/"),
        ("progress partial (htmx)", "/settings/onedrive/progress"),
    ):
        for uid in (small, large):  # warm-up: templates compiled, caches filled
            _measure(app, client, uid, path, counter)
        times = {small: [], large: []}
        stmts = {}
        for i in range(args.rounds):
            order = (small, large) if i % 2 == 0 else (large, small)
            for uid in order:
                n, elapsed = _measure(app, client, uid, path, counter)
                stmts[uid] = n
                times[uid].append(elapsed)
        ms_small = statistics.median(times[small]) * 1000
        ms_large = statistics.median(times[large]) * 1000
        ratio = ms_large / ms_small
        print(
            f"{label:28} {stmts[small]:>9} {stmts[large]:>10} {ms_small:>8.2f} "
            f"{ms_large:>8.2f} {ratio:>5.2f}x"
        )
        if stmts[large] > stmts[small]:
            print(f"  FAIL: {label} issues more statements for the large library")
            failed = True
        if ratio >= 2:
            print(f"  FAIL: {label} is {ratio:.2f}x slower with 10,000 files (target < 2x)")
            failed = True
    print("targets: same statement count; time ratio < 2x —", "missed" if failed else "met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
