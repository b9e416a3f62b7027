"""Upload benchmark: drivesync.graph's upload_file against plain ``requests``, side by side.

Run from the repository root::

    .venv/bin/python bench/upload.py [--small-count 100 --small-mb 1 --big-mb 256 --fragment-mb 10]
    .venv/bin/python bench/upload.py --tls   # over HTTPS, as production talks to Microsoft

Both sides send the same bytes to the same local OneDrive emulator:

- small files: ``upload_file`` (one simple PUT each, quickXorHash verified) versus a bare
  ``PUT /v1.0/me/drive/items/{parent}:/{name}:/content`` per file;
- one big file: ``upload_file`` through an upload session versus ``createUploadSession`` plus raw
  fragment PUTs of the same size.

Each round resets the emulator and runs both sides, alternating which goes first (small files
interleaved one by one, the big file A B B A); the figures are medians over the rounds. Peak
memory of the big upload is measured in a fresh subprocess per side (tracemalloc peak, and RSS
high-water growth from /proc/self/status). The exit status is 1 when the client is slower than
0.9x the baseline or its memory growth reaches 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivesync.graph.client import GraphClient  # noqa: E402
from drivesync.graph.upload import FRAGMENT_MULTIPLE, upload_file  # noqa: E402
from onedrive_emulator.client import EmulatorAdmin  # noqa: E402
from onedrive_emulator.server import EmulatorServer  # noqa: E402

MIB = 1024 * 1024
CLIENT_ID = "bench-0000-4000-8000-000000000000"
CLIENT_SECRET = "bench-secret-value"  # noqa: S105 - registered with the local emulator only
REDIRECT_URI = "http://localhost:5000/onedrive/callback"
EMAIL = "alex@contoso.example"
RATIO_TARGET = 0.9
MEMORY_TARGET = 64 * MIB
TIMEOUT = (10, 300)


# -- the emulator --------------------------------------------------------------------------------


class Emulator:
    """The OneDrive emulator, in a subprocess (default) or in this process, HTTP or HTTPS.

    Over HTTPS the emulator's CA is trusted the way production code would trust one:
    ``REQUESTS_CA_BUNDLE`` (and ``SSL_CERT_FILE``) point at certifi's roots plus that CA, for
    this process and the memory-measuring subprocesses it starts.
    """

    def __init__(self, mode: str, tls: bool = False) -> None:
        self.mode = mode
        self.tls = tls
        self._proc: subprocess.Popen[str] | None = None
        self._server: EmulatorServer | None = None
        self.url = ""

    def _trust(self, bundle: str) -> None:
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = bundle

    def __enter__(self) -> Emulator:
        clients = [(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])]
        if self.mode == "inprocess":
            self._server = EmulatorServer(clients=clients, tls=self.tls).start()
            self.url = self._server.url
            if self._server.bundle_file:
                self._trust(self._server.bundle_file)
            return self
        cmd = [
            sys.executable,
            "-m",
            "onedrive_emulator",
            "--port",
            "0",
            "--client-id",
            CLIENT_ID,
            "--client-secret",
            CLIENT_SECRET,
            "--redirect-uri",
            REDIRECT_URI,
            *(["--tls"] if self.tls else []),
        ]
        self._proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("OneDrive emulator on "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = line.split()[3]
        if self.tls:
            ca_line = self._proc.stdout.readline()  # "CA certificate: … REQUESTS_CA_BUNDLE=…"
            if "REQUESTS_CA_BUNDLE=" not in ca_line:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the emulator printed no CA bundle: {ca_line!r}")
            self._trust(ca_line.split("REQUESTS_CA_BUNDLE=", 1)[1].split()[0])
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
        if self._proc is not None:
            # SIGINT: the emulator's KeyboardInterrupt handler removes its data folder.
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()


# -- test data -----------------------------------------------------------------------------------


@dataclass
class Data:
    """Random files written once and uploaded by both sides."""

    small: list[Path]
    big: Path

    @property
    def small_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.small)

    @property
    def big_bytes(self) -> int:
        return self.big.stat().st_size


def make_data(folder: Path, small_count: int, small_mb: float, big_mb: int) -> Data:
    """Write ``small_count`` files of ``small_mb`` MiB and one of ``big_mb`` MiB of random bytes."""
    small_size = int(small_mb * MIB)
    small = []
    for i in range(small_count):
        path = folder / f"small-{i:04d}.bin"
        path.write_bytes(os.urandom(small_size))
        small.append(path)
    big = folder / "big.bin"
    with open(big, "wb") as fh:
        for _ in range(big_mb):
            fh.write(os.urandom(MIB))
    return Data(small, big)


# -- the two sides -------------------------------------------------------------------------------


class Side:
    """One way of uploading: the drivesync client or bare requests."""

    def __init__(self, name: str, graph: str, token: str, fragment: int) -> None:
        self.name = name
        self.graph = graph
        self.token = token
        self.fragment = fragment
        self.session = requests.Session()  # the Graph session (bearer token)
        self.plain = requests.Session()  # upload URLs: never a bearer token
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.client = GraphClient(
            lambda _force: token, base_url=graph, session=requests.Session(), timeout=TIMEOUT
        )

    def close(self) -> None:
        for s in (self.session, self.plain, self.client.session, self.client.plain_session):
            s.close()

    def folder(self, name: str) -> str:
        """Create a folder under root and return its id."""
        return self.client.ensure_folder(name)["id"]

    def upload_small(self, parent: str, path: Path) -> None:
        if self.name == "client":
            upload_file(self.client, path, parent, path.name)
            return
        data = path.read_bytes()
        resp = self.session.put(
            f"{self.graph}/me/drive/items/{parent}:/{path.name}:/content",
            params={"@microsoft.graph.conflictBehavior": "fail"},
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=TIMEOUT,
        )
        with resp:
            if resp.status_code not in (200, 201):
                raise RuntimeError(f"baseline PUT answered {resp.status_code}: {resp.text[:200]}")

    def upload_big(self, parent: str, path: Path) -> None:
        if self.name == "client":
            upload_file(self.client, path, parent, path.name, fragment_size=self.fragment)
            return
        resp = self.session.post(
            f"{self.graph}/me/drive/items/{parent}:/{path.name}:/createUploadSession",
            json={"item": {"@microsoft.graph.conflictBehavior": "fail", "name": path.name}},
            timeout=TIMEOUT,
        )
        with resp:
            resp.raise_for_status()
            url = resp.json()["uploadUrl"]
        size = path.stat().st_size
        with open(path, "rb") as fh:
            offset = 0
            while offset < size:
                data = fh.read(self.fragment)
                end = offset + len(data) - 1
                resp = self.plain.put(
                    url,
                    data=data,
                    timeout=TIMEOUT,
                    headers={"Content-Range": f"bytes {offset}-{end}/{size}"},
                )
                with resp:
                    if resp.status_code not in (200, 201, 202):
                        raise RuntimeError(f"baseline fragment answered {resp.status_code}")
                offset = end + 1


def timed(fn: Callable[..., None], *args: Any) -> float:
    """Return how long ``fn(*args)`` took, in seconds."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run_round(url: str, data: Data, fragment: int, order: list[str], tag: str) -> dict[str, Any]:
    """Reset the emulator and time both sides on both workloads, ``order[0]`` first.

    Small files are interleaved one by one (A B B A A B ...) and the big file goes up twice per
    side (A B B A), so drift in the machine's load hits both sides alike.
    """
    admin = EmulatorAdmin(url)
    sides: dict[str, Side] = {}
    try:
        admin.reset()
        for name in order:
            sides[name] = Side(
                name, f"{url}/v1.0", admin.mint_token(EMAIL, CLIENT_ID)["access_token"], fragment
            )
        small_dirs = {n: s.folder(f"{tag}-{n}-small") for n, s in sides.items()}
        big_dirs = {n: s.folder(f"{tag}-{n}-big") for n, s in sides.items()}
        big_dirs_2 = {n: s.folder(f"{tag}-{n}-big-2") for n, s in sides.items()}
        out: dict[tuple[str, str], float] = {(n, "small"): 0.0 for n in order}
        for i, path in enumerate(data.small):
            for name in order if i % 2 == 0 else order[::-1]:
                out[(name, "small")] += timed(sides[name].upload_small, small_dirs[name], path)
        for i, name in enumerate(order + order[::-1]):
            folder = (big_dirs if i < len(order) else big_dirs_2)[name]
            seconds = timed(sides[name].upload_big, folder, data.big)
            out[(name, "big")] = out.get((name, "big"), 0.0) + seconds / 2
        admin.reset()  # drop the stored bytes before the next round
        return out
    finally:
        for side in sides.values():
            side.close()
        admin.close()


# -- memory, measured in a fresh subprocess ------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); return whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: upload the big file once; return peak memory growth in bytes."""
    side = Side(spec["side"], spec["graph"], spec["token"], spec["fragment"])
    try:
        parent = side.folder(spec["folder"])
        rss_before = _status_kib("VmRSS") * 1024
        hwm_reset = _reset_hwm()
        hwm_before = _status_kib("VmHWM") * 1024
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tracemalloc.start()
        side.upload_big(parent, Path(spec["path"]))
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        hwm_after = _status_kib("VmHWM") * 1024
    finally:
        side.close()
    # Without a HWM reset, growth is measured from the current RSS (the conservative reading).
    base = hwm_before if hwm_reset else rss_before
    return {
        "tracemalloc_peak": peak,
        "rss_hwm_growth": hwm_after - base,
        "hwm_reset": hwm_reset,
        "maxrss_before": maxrss_before,
    }


def measure_memory(url: str, data: Data, fragment: int, side: str) -> dict[str, Any]:
    """Run ``measure_child`` for ``side`` in a fresh interpreter and return its figures."""
    admin = EmulatorAdmin(url)
    try:
        admin.reset()
        token = admin.mint_token(EMAIL, CLIENT_ID)["access_token"]
    finally:
        admin.close()
    spec = {
        "side": side,
        "graph": f"{url}/v1.0",
        "token": token,
        "fragment": fragment,
        "folder": f"memory-{side}",
        "path": str(data.big),
    }
    # The token goes through stdin, not argv (argv is visible to every local user).
    proc = subprocess.run(
        [sys.executable, __file__, "--measure-memory"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement for {side} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- main ----------------------------------------------------------------------------------------


def mb_s(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-count", type=int, default=100)
    parser.add_argument("--small-mb", type=float, default=1.0)
    parser.add_argument("--big-mb", type=int, default=256)
    parser.add_argument("--fragment-mb", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument(
        "--emulator",
        choices=("subprocess", "inprocess"),
        default="subprocess",
        help="where the emulator runs (subprocess: it does not share our GIL)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="serve the emulator over HTTPS (throw-away CA)"
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure_memory:
        print(json.dumps(measure_child(json.loads(sys.stdin.read()))))
        return 0

    fragment = int(args.fragment_mb * MIB)
    if fragment % FRAGMENT_MULTIPLE:
        parser.error(f"--fragment-mb must give a multiple of {FRAGMENT_MULTIPLE} bytes (320 KiB)")

    with tempfile.TemporaryDirectory(prefix="drivesync-bench-") as tmp:
        t0 = time.perf_counter()
        data = make_data(Path(tmp), args.small_count, args.small_mb, args.big_mb)
        print(
            f"test data: {args.small_count} x {args.small_mb:g} MiB + {args.big_mb} MiB "
            f"in {time.perf_counter() - t0:.1f}s; emulator: {args.emulator} "
            f"over {'HTTPS' if args.tls else 'HTTP'}; "
            f"fragment {args.fragment_mb:g} MiB; {args.rounds} rounds",
            flush=True,
        )
        with Emulator(args.emulator, tls=args.tls) as emu:
            run_round(
                emu.url,
                Data(data.small[:5], data.small[0]),
                fragment,
                ["baseline", "client"],
                "warmup",
            )
            times: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds):
                order = ["baseline", "client"] if r % 2 == 0 else ["client", "baseline"]
                result = run_round(emu.url, data, fragment, order, f"r{r}")
                for key, seconds in result.items():
                    times.setdefault(key, []).append(seconds)
                print(
                    f"  round {r + 1} ({' then '.join(order)}): "
                    + ", ".join(f"{k[0]} {k[1]} {v:.2f}s" for k, v in result.items()),
                    flush=True,
                )
            memory = {}
            if not args.skip_memory:
                for side in ("baseline", "client"):
                    memory[side] = measure_memory(emu.url, data, fragment, side)
        return report(args, data, times, memory)


def report(
    args: argparse.Namespace,
    data: Data,
    times: dict[tuple[str, str], list[float]],
    memory: dict[str, dict[str, Any]],
) -> int:
    """Print the tables; return 1 (with the reasons printed) if a target is missed."""
    failures = []
    sizes = {"small": data.small_bytes, "big": data.big_bytes}
    labels = {
        "small": f"{args.small_count} x {args.small_mb:g} MiB (simple PUT)",
        "big": f"1 x {args.big_mb} MiB (session, {args.fragment_mb:g} MiB fragments)",
    }
    print()
    print(
        f"{'workload (median of rounds)':<44} {'client MB/s':>12} {'baseline MB/s':>14} "
        f"{'ratio':>7}  target"
    )
    for kind in ("small", "big"):
        client = mb_s(sizes[kind], statistics.median(times[("client", kind)]))
        baseline = mb_s(sizes[kind], statistics.median(times[("baseline", kind)]))
        # Each round is a paired comparison (same machine load): the ratio is the median of
        # the per-round ratios, which cancels drift between rounds.
        ratio = statistics.median(
            b / c for c, b in zip(times[("client", kind)], times[("baseline", kind)], strict=True)
        )
        ok = ratio >= RATIO_TARGET
        print(
            f"{labels[kind]:<44} {client:>12.1f} {baseline:>14.1f} {ratio:>7.2f}  "
            f">= {RATIO_TARGET} {'ok' if ok else 'MISSED'}"
        )
        if not ok:
            failures.append(
                f"{kind}: client throughput is {ratio:.2f}x the baseline (target >= {RATIO_TARGET})"
            )
    if memory:
        print()
        print(
            f"{'peak memory growth, big upload':<44} {'tracemalloc':>12} {'RSS high-water':>14}"
            "  target"
        )
        for side in ("client", "baseline"):
            m = memory[side]
            peak, rss = m["tracemalloc_peak"] / MIB, m["rss_hwm_growth"] / MIB
            line = f"{side:<44} {peak:>9.1f} MiB {rss:>10.1f} MiB"
            if side == "client":
                ok = max(m["tracemalloc_peak"], m["rss_hwm_growth"]) < MEMORY_TARGET
                line += f"  < {MEMORY_TARGET // MIB} MiB {'ok' if ok else 'MISSED'}"
                if not ok:
                    failures.append(
                        f"client memory growth {max(peak, rss):.1f} MiB "
                        f"(target < {MEMORY_TARGET // MIB} MiB)"
                    )
            print(line)
        if not memory["client"]["hwm_reset"]:
            print("(VmHWM could not be reset: RSS growth measured from the RSS before upload)")
    print()
    if failures:
        for failure in failures:
            print(f"FAILED: {failure}")
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
