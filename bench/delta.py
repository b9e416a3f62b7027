"""Delta benchmark: change detection in a 10,000-item folder, next to the listing peers do.

Run from the repository root::

    .venv/bin/python bench/delta.py [--items 10000 --threads 8]

The OneDrive emulator runs in its own process (its memory and CPU are not counted as ours). A
folder of ``--items`` files is created in it; then, through the product's own code
(``services.changes.check`` on SQLite, the real staging and mirror tables):

1. the initial enumeration: time, Graph requests, and the peak memory it allocates (tracemalloc:
   pages are streamed into the staging table, so it must not grow with the folder);
2. a check when nothing changed: Graph requests (target: exactly one);
3. one item edited among them: requests and time for the check to see it, side by side with the
   naive way (rclone-less integrations: list ``children`` page by page, 200 a page, and compare
   eTags with the previous listing), whose requests grow with the folder.

Targets: one request when nothing changed; memory growth under 32 MiB for 10,000 items;
detecting one change at least 20x cheaper in requests than the listing. Exits 1 when one is
missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_run import ALEX, CLIENT_ID, graph_requests, start_emulator  # noqa: E402 - bench/

from drivesync import create_app  # noqa: E402
from drivesync.extensions import db  # noqa: E402
from drivesync.graph.client import GraphClient  # noqa: E402
from drivesync.models import File, Integration  # noqa: E402
from drivesync.scope import user_scope  # noqa: E402
from drivesync.services import accounts, changes  # noqa: E402
from onedrive_emulator.client import EmulatorAdmin  # noqa: E402

FOLDER = "drivesync"
PAGE = 200  # what the naive listing asks for per page (Graph's usual default)


def populate(emu: EmulatorAdmin, n: int, threads: int) -> None:
    """Create ``n`` small files in the folder (from "another device", the admin API)."""

    def batch(start: int) -> None:
        own = EmulatorAdmin(emu.base_url)  # one HTTP session per thread
        try:
            for i in range(start, n, threads):
                own.modify_item(ALEX, f"/{FOLDER}/item-{i:05d}.txt", f"item {i}".encode())
        finally:
            own.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(batch, range(threads)))


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Return (result, seconds, peak bytes allocated above the start) of ``fn``."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    return result, seconds, peak


def main() -> int:
    """Run the benchmark; return 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    if args.items < 1 or args.threads < 1:
        parser.error("--items and --threads must be at least 1")
    proc, url = start_emulator(latency_ms=0)
    tmp = tempfile.mkdtemp(prefix="drivesync-bench-delta-")
    try:
        emu = EmulatorAdmin(url)
        emu.register_client(CLIENT_ID, "bench-secret", ["http://localhost/cb"])
        token = str(emu.mint_token(ALEX, CLIENT_ID)["access_token"])

        def client() -> GraphClient:
            return GraphClient(lambda force: token, base_url=f"{url}/v1.0")

        started = time.perf_counter()
        populate(emu, args.items, args.threads)
        print(f"folder of {args.items} items created in {time.perf_counter() - started:.1f} s")
        app = create_app({
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{os.path.join(tmp, 'bench.db')}",
            "STORAGE_DIR": os.path.join(tmp, "storage"),
            "INSTANCE_DIR": tmp,
            "SECRET_KEY": "bench",
            "TASK_BACKEND": "eager",
            "EMULATOR_URL": url,
            "GRAPH_URL": f"{url}/v1.0",
        })  # fmt: skip
        # The check's Graph client: the minted token, no refresh (no OAuth row needed here).
        changes.graph_client_for = lambda user_id: (  # type: ignore[assignment]
            client(),
            db.session.execute(
                db.select(Integration).where(Integration.user_id == user_id)
            ).scalar_one(),
        )
        with app.app_context():
            db.create_all()
            uid = accounts.create_user("bench@example.com", "correct horse battery").id
            c = client()
            folder_id = c.get_item_by_path(FOLDER)["id"]
            c.close()
            with user_scope(uid):
                db.session.add(Integration(user_id=uid, folder_id=folder_id, folder_path=FOLDER,
                                           drive_type="personal", autosync=False))  # fmt: skip
                db.session.commit()
                # One library file tracks an item, so the edit below has a file to mark.
                tracked = emu.list_items(ALEX)
                item = next(i for i in tracked if i["name"] == "item-00042.txt")
                db.session.add(File(owner_id=uid, original_name="item-00042.txt",
                                    stored_path="x", size=item["size"], mime_type="text/plain",
                                    content_hash="0" * 64, quick_xor_hash=item["quickXorHash"],
                                    onedrive_id=item["id"], onedrive_etag=item["eTag"],
                                    onedrive_sync_status="synced"))  # fmt: skip
                db.session.commit()

                def check() -> changes.CheckResult:
                    changes.request_check(uid, min_gap=timedelta(0))
                    result = changes.check(uid)
                    assert result is not None, "the check failed"
                    return result

                emu.clear_requests_log()
                first, first_s, first_peak = measured(check)
                first_requests = graph_requests(emu)
                emu.clear_requests_log()
                quiet, quiet_s, _ = measured(check)
                quiet_requests = graph_requests(emu)

                emu.modify_item(ALEX, f"/{FOLDER}/item-00042.txt", b"edited elsewhere")
                emu.clear_requests_log()
                seen, seen_s, seen_peak = measured(check)
                delta_requests = graph_requests(emu)
                state = db.session.execute(
                    db.select(File.onedrive_sync_status).where(File.owner_id == uid)
                ).scalar_one()

        # The naive way: list every child page by page, compare eTags with the last listing.
        def listing() -> dict[str, str]:
            c = client()
            try:
                return {i["id"]: i.get("eTag", "") for i in c.list_children(folder_id, top=PAGE)}
            finally:
                c.close()

        before = listing()
        emu.modify_item(ALEX, f"/{FOLDER}/item-00043.txt", b"edited elsewhere too")
        emu.clear_requests_log()
        after, naive_s, naive_peak = measured(listing)
        naive_requests = graph_requests(emu)
        found = [k for k, v in after.items() if before.get(k) != v]
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    mib = 1024 * 1024
    ratio = naive_requests / max(1, delta_requests)
    print(f"initial enumeration : {first.items} items, {first_requests} requests, "
          f"{first_s:.2f} s, peak {first_peak / mib:.1f} MiB allocated")  # fmt: skip
    print(f"nothing changed     : {quiet_requests} request(s), {quiet_s * 1000:.0f} ms")
    print(f"one edit, delta     : {delta_requests} request(s), {seen_s * 1000:.0f} ms, "
          f"peak {seen_peak / mib:.2f} MiB; the file is now {state!r}")  # fmt: skip
    print(f"one edit, listing   : {naive_requests} requests, {naive_s * 1000:.0f} ms, "
          f"peak {naive_peak / mib:.1f} MiB; found {len(found)} change(s)")  # fmt: skip
    print(f"requests ratio      : {ratio:.0f}x cheaper through delta")
    missed = []
    if quiet_requests != 1:
        missed.append(f"a check with nothing changed took {quiet_requests} requests (target 1)")
    if first_peak >= 32 * mib:
        missed.append(f"the enumeration allocated {first_peak / mib:.1f} MiB (target < 32 MiB)")
    if ratio < 20:
        missed.append(f"delta was only {ratio:.1f}x cheaper in requests (target 20x)")
    if state != "remote_changed" or quiet.transitions or first.transitions:
        missed.append(f"the edit was not detected right (file state {state!r})")
    for line in missed:
        print("MISSED:", line)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
