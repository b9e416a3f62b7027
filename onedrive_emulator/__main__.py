"""Start the emulator: ``python -m onedrive_emulator --host 127.0.0.1 --port 8765 [--tls]``.

``--tls`` serves HTTPS with a certificate from a throw-away CA and prints where the CA file and
a ready bundle (certifi's roots plus that CA, for ``REQUESTS_CA_BUNDLE``) are; both are deleted
when the emulator stops. ``--latency-ms 50`` adds 50 ms to every request but the admin API.

Register apps with repeated ``--client-id X --client-secret Y --redirect-uri URI`` groups (one
secret per client id, in order; several ``--redirect-uri`` apply to the latest client).
Development and tests only: it refuses to start with ``DRIVESYNC_ENV=production``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from .server import EmulatorServer


class _ClientAction(argparse.Action):
    """Collect ``--client-id`` / ``--client-secret`` / ``--redirect-uri`` into groups."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        """Append to the current client group."""
        clients = getattr(namespace, "clients", None) or []
        if option_string == "--client-id" or not clients:
            clients.append({"id": None, "secret": None, "uris": []})
        current = clients[-1]
        if option_string == "--client-id":
            current["id"] = values
        elif option_string == "--client-secret":
            current["secret"] = values
        else:
            current["uris"].append(values)
        namespace.clients = clients


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into KeyboardInterrupt so the temporary folders are removed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m onedrive_emulator",
        description="Local Microsoft identity platform + OneDrive.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    for flag in ("--client-id", "--client-secret", "--redirect-uri"):
        parser.add_argument(flag, action=_ClientAction, dest="clients")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a throw-away CA (needs trustme)"
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="milliseconds added to every request except the admin API",
    )
    parser.add_argument(
        "--notify-ca",
        default=None,
        help="CA file to trust for change-notification URLs (default: the system's roots)",
    )
    args = parser.parse_args(argv)
    clients = []
    for c in args.clients or []:
        if not c["id"]:
            parser.error("--client-secret / --redirect-uri must follow a --client-id")
        clients.append((c["id"], c["secret"], c["uris"]))
    try:
        server = EmulatorServer(
            args.host,
            args.port,
            clients=clients,
            quiet=not args.verbose,
            tls=args.tls,
            latency=args.latency_ms / 1000,
            notify_ca=args.notify_ca,
        )
        server.start()
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"OneDrive emulator on {server.url} (Graph: {server.url}/v1.0, identity: "
        f"{server.url}/common/oauth2/v2.0/authorize, admin: {server.url}/_emulator/)",
        flush=True,
    )
    if server.tls is not None:
        print(
            f"CA certificate: {server.ca_file} (trust it with "
            f"REQUESTS_CA_BUNDLE={server.bundle_file} SSL_CERT_FILE={server.bundle_file})",
            flush=True,
        )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        assert server._thread is not None  # noqa: S101
        server._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
