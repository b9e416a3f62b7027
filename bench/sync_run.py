"""Sync run benchmark: the engine's Sync All against the seed's one-file-at-a-time loop.

Run from the repository root::

    .venv/bin/python bench/sync_run.py [--files 100 --kib 64 --latency-ms 50 --users 4]

The OneDrive emulator runs in its own process (so its CPU is not counted as ours), with its
``--latency-ms`` knob: every request but the admin API waits that long in the emulator's
request thread before it is handled, which is what a round trip to Microsoft costs a client.
Printed:

- Sync All of N files through ``sync.request_sync`` (the run executes inline, with the
  configured ``SYNC_CONCURRENCY``), next to the same N files pushed one at a time with
  ``transfer.sync_file`` on one drive (the seed's way), on the same emulator;
- the speed-up, Graph requests per file (from the emulator's request log), the ratio to the lower
  bound ``ceil(N / concurrency) x latency``, our process's CPU per file, and the engine's CPU per
  file outside Graph requests (our process's CPU minus the thread CPU spent inside
  ``requests.Session.request``: claim, SQL, bookkeeping, hashing, threads);
- then ``--users`` users syncing N files each at once, against the lower bound set by the
  per-user and global concurrency caps.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivesync import create_app  # noqa: E402
from drivesync.extensions import db  # noqa: E402
from drivesync.graph.client import GraphClient  # noqa: E402
from drivesync.graph.drive import GraphDrive  # noqa: E402
from drivesync.models import Integration  # noqa: E402
from drivesync.scope import user_scope  # noqa: E402
from drivesync.services import accounts, library, sync, transfer  # noqa: E402
from drivesync.services.storage import LocalStorage  # noqa: E402
from onedrive_emulator.client import EmulatorAdmin  # noqa: E402

ALEX = "alex@contoso.example"
CLIENT_ID = "bench-client"


class GraphCpu:
    """Thread CPU spent inside ``requests.Session.request`` (preparing, sending, reading a
    Graph request), summed over all threads while installed: what is *not* the engine's own."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._real = requests.Session.request

    def __enter__(self) -> GraphCpu:
        real, meter = self._real, self

        def request(session: requests.Session, *args: Any, **kwargs: Any) -> requests.Response:
            start = time.thread_time()
            try:
                return real(session, *args, **kwargs)
            finally:
                spent = time.thread_time() - start
                with meter._lock:
                    meter.seconds += spent

        requests.Session.request = request  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        requests.Session.request = self._real  # type: ignore[method-assign]


def free_port() -> int:
    """Return a free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_emulator(latency_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    """Start the emulator in its own process with ``latency_ms`` per request; return it, its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "onedrive_emulator", "--port", str(port),
         "--latency-ms", str(latency_ms)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            requests.get(url + "/_emulator/requests", timeout=1)
            return proc, url
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)


def setup_user(app: Any, email: str, folder: str, client: GraphClient, n: int, size: int) -> int:
    """Create a user whose integration targets ``folder`` on Alex's drive, with ``n`` files."""
    with app.app_context():
        uid = accounts.create_user(email, "correct horse battery").id
        folder_id = client.ensure_folder(folder)["id"]
        with user_scope(uid):
            db.session.add(Integration(user_id=uid, folder_id=folder_id, drive_type="personal",
                                       autosync=False))  # fmt: skip
            db.session.commit()
            store = LocalStorage(app.config["STORAGE_DIR"])
            for i in range(n):
                incoming = store.new_incoming()
                incoming.write(os.urandom(size))
                library.add_file(uid, f"file-{i:04d}.bin", incoming, store)
    return uid


def graph_requests(emu: EmulatorAdmin) -> int:
    """Return how many Graph requests the emulator has logged (admin calls excluded)."""
    return sum(1 for r in emu.requests_log() if not r["path"].startswith("/_emulator"))


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """Return (wall seconds, process CPU seconds) spent in ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def one_round(
    app: Any,
    emu: EmulatorAdmin,
    client: Callable[[], GraphClient],
    engine_user: int,
    seed_user: int,
    crowd: list[int],
    n: int,
    *,
    seed_first: bool,
) -> dict[str, float]:
    """Run the seed's loop, the engine's Sync All and the crowd once; return their figures."""

    def engine_run() -> None:
        with app.app_context(), user_scope(engine_user):
            run = sync.request_sync(engine_user)
            assert (run.status, run.succeeded) == ("done", n), run

    def seed_loop() -> None:
        with app.app_context(), user_scope(seed_user):
            drive = GraphDrive(client())
            ids = [f.id for f in sync.pending_files(seed_user, limit=n)]
            for fid in ids:
                assert transfer.sync_file(fid, seed_user, drive).status == "synced"
            drive.close()

    def crowd_run() -> None:
        def one(uid: int) -> None:
            with app.app_context(), user_scope(uid):
                run = sync.request_sync(uid)
                assert (run.status, run.succeeded) == ("done", n), run
                db.session.remove()

        threads = [threading.Thread(target=one, args=(uid,)) for uid in crowd]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    figures: dict[str, float] = {}

    def seed() -> None:
        figures["seed"] = timed(seed_loop)[0]

    def engine() -> None:
        emu.clear_requests_log()
        with GraphCpu() as graph_cpu:
            figures["engine"], cpu = timed(engine_run)
        figures["requests"] = graph_requests(emu) / n
        figures["cpu"] = cpu * 1000 / n
        figures["outside"] = (cpu - graph_cpu.seconds) * 1000 / n

    for step in (seed, engine) if seed_first else (engine, seed):
        step()
    figures["crowd"] = timed(crowd_run)[0]
    return figures


def main() -> int:
    """Run the benchmark; return 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--kib", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="figures are medians over rounds")
    args = parser.parse_args()
    latency, n, size = args.latency_ms / 1000, args.files, args.kib * 1024
    proc, url = start_emulator(args.latency_ms)
    emu = EmulatorAdmin(url)
    try:
        emu.register_client(CLIENT_ID, "bench-secret", ["http://localhost/cb"])
        token = str(emu.mint_token(ALEX, CLIENT_ID)["access_token"])

        def client() -> GraphClient:
            return GraphClient(lambda force: token, base_url=f"{url}/v1.0")

        tmp = Path(tempfile.mkdtemp(prefix="drivesync-bench-"))
        app = create_app({
            "TESTING": True, "SECRET_KEY": "bench-" + "x" * 40, "TOKEN_KEYS": "",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp / 'bench.sqlite3'}",
            "STORAGE_DIR": str(tmp / "storage"), "INSTANCE_DIR": str(tmp / "instance"),
            "TASK_BACKEND": "eager", "SYNC_CONCURRENCY": args.concurrency,
            "SYNC_GLOBAL_CONCURRENCY": 16, "SYNC_BATCH_LIMIT": max(100, n),
            "SYNC_DRIVE_FACTORY": lambda user_id: GraphDrive(client()),
        })  # fmt: skip
        with app.app_context():
            db.create_all()
        setup = GraphClient(lambda force: token, base_url=f"{url}/v1.0")
        rounds: list[dict[str, float]] = []
        for r in range(args.rounds):
            # Fresh users and files each round (a round syncs them all); the side that goes
            # first alternates, so a change in the machine's load hits both alike.
            engine_user = setup_user(app, f"engine{r}@example.com", f"engine-{r}", setup, n, size)
            seed_user = setup_user(app, f"seed{r}@example.com", f"seed-{r}", setup, n, size)
            crowd = [setup_user(app, f"u{i}r{r}@example.com", f"crowd-{i}-{r}", setup, n, size)
                     for i in range(args.users)]  # fmt: skip
            rounds.append(one_round(app, emu, client, engine_user, seed_user, crowd, n,
                                    seed_first=r % 2 == 0))  # fmt: skip
        setup.close()
        med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
        bound = math.ceil(n / args.concurrency) * latency
        slots = min(16, args.concurrency * args.users)
        crowd_bound = math.ceil(n * args.users / slots) * latency
        speedup = med["seed"] / med["engine"]
        print(f"files {n} x {args.kib} KiB, latency {args.latency_ms:.0f} ms, "
              f"concurrency {args.concurrency}, median of {args.rounds} rounds "
              f"(each round's figures in brackets)")  # fmt: skip

        def each(key: str, fmt: str = "{:.2f}") -> str:
            return "[" + " ".join(fmt.format(x[key]) for x in rounds) + "]"

        print(f"one at a time (seed):  {med['seed']:6.2f} s {each('seed')}")
        print(f"Sync All (engine):     {med['engine']:6.2f} s {each('engine')}  "
              f"speed-up {speedup:.2f}x (target >= 3.5)")  # fmt: skip
        print(f"lower bound:           {bound:6.2f} s   ratio {med['engine'] / bound:.2f}x "
              f"(target <= 1.3)")  # fmt: skip
        print(f"Graph requests/file:   {med['requests']:.2f} (target <= 1.05)")
        print(f"our CPU per file:      {med['cpu']:.1f} ms {each('cpu', '{:.1f}')} "
              f"(engine + HTTP + SQLite)")  # fmt: skip
        print(f"engine CPU outside Graph requests: {med['outside']:.1f} ms per file "
              f"{each('outside', '{:.1f}')} (target < 3)")  # fmt: skip
        print(f"{args.users} users at once:      {med['crowd']:6.2f} s {each('crowd')}  lower "
              f"bound {crowd_bound:.2f} s, ratio {med['crowd'] / crowd_bound:.2f}x "
              f"(target <= 2)")  # fmt: skip
        missed = speedup < 3.5 or med["engine"] > 1.3 * bound or med["requests"] > 1.05
        missed = missed or med["outside"] >= 3 or med["crowd"] > 2 * crowd_bound
        return 1 if missed else 0
    finally:
        emu.close()
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
