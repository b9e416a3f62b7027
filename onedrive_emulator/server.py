"""Run the emulator on a real socket in a background thread (tests, the embedded default).

Plain HTTP by default; ``tls=True`` serves HTTPS with a certificate from a throw-away CA
(:mod:`onedrive_emulator.tls`), the way Microsoft's endpoints are always reached. The TLS
handshake runs in the connection's own thread, so a slow or hostile client never holds up the
accept loop.
"""

from __future__ import annotations

import socket
import ssl
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from .app import create_emulator_app
from .state import EmulatorState
from .tls import ServerTls, server_tls

if TYPE_CHECKING:
    import trustme

_HANDSHAKE_TIMEOUT = 30.0
_CLOSE_NOTIFY_WAIT = 0.25  # how long a clean close waits for the peer's close_notify


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not print one line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


class _EmulatorWSGIServer(ThreadedWSGIServer):
    """werkzeug's threaded server, with the TLS handshake in each connection's thread."""

    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Do the TLS handshake in this connection's thread, then serve it."""
        try:
            # werkzeug writes the status line, headers and body separately; without NODELAY,
            # Nagle plus the client's delayed ACK stall every TLS response by about 40 ms.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            request.settimeout(_HANDSHAKE_TIMEOUT)
            conn = self.tls.wrap_socket(request, server_side=True)
            conn.settimeout(None)
        except (OSError, ValueError):
            return  # the client gave up, does not trust our CA, or speaks plain HTTP
        try:
            super().finish_request(conn, client_address)
        finally:
            self.shutdown_request(conn)

    def shutdown_request(self, request: Any) -> None:
        """Close the connection cleanly: TLS close_notify first, then the TCP FIN."""
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(_CLOSE_NOTIFY_WAIT)
                request = request.unwrap()
            except (OSError, ValueError):
                pass  # the peer already left, or a fault already cut the TLS layer
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class EmulatorServer:
    """A threaded werkzeug server running the emulator in a daemon thread.

    ``clients`` pre-registers apps: ``[(client_id, client_secret, [redirect_uris]), ...]``.
    ``tls=True`` serves HTTPS with a certificate for 127.0.0.1, ::1 and localhost signed by
    ``ca`` (a fresh throw-away CA when omitted); :attr:`ca_file` and :attr:`bundle_file` say
    what to trust. ``latency`` adds that many seconds to every non-admin request.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clients: list[tuple[str, str | None, list[str]]] | None = None,
        state: EmulatorState | None = None,
        quiet: bool = True,
        tls: bool = False,
        ca: trustme.CA | None = None,
        latency: float = 0.0,
        notify_ca: str | None = None,
    ) -> None:
        """Prepare (but do not start) the server.

        ``notify_ca``: a CA file trusted for change-notification URLs (else the system's).
        """
        self.host, self.port = host, port
        self.state = state or EmulatorState()
        for client_id, secret, uris in clients or []:
            self.state.register_client(client_id, secret, uris)
        self.state.set_latency(latency, default=True)
        self._quiet = quiet
        self._notify_ca = notify_ca
        self._want_tls = tls or ca is not None
        self._ca = ca
        self.tls: ServerTls | None = None
        self._server: _EmulatorWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``https://127.0.0.1:PORT`` (``http://`` without TLS)."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_url_host(self.host)}:{self._server.server_port}"

    @property
    def ca_file(self) -> str | None:
        """Return the path of the CA certificate to trust (None over plain HTTP)."""
        return self.tls.ca_file if self.tls else None

    @property
    def bundle_file(self) -> str | None:
        """Return certifi's roots plus the CA, for ``REQUESTS_CA_BUNDLE`` (None over HTTP)."""
        return self.tls.bundle_file if self.tls else None

    def start(self) -> EmulatorServer:
        """Bind the socket and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        app = create_emulator_app(self.state, notify_ca=self._notify_ca)
        handler = _QuietHandler if self._quiet else WSGIRequestHandler
        server = _EmulatorWSGIServer(self.host, self.port, app, handler)
        if self._want_tls:
            try:
                self.tls = server_tls(self.host, self._ca)
            except BaseException:
                server.server_close()
                raise
            # Set after construction: werkzeug would wrap the listening socket (handshakes in
            # the accept loop); its handler still reads ``ssl_context`` for wsgi.url_scheme.
            server.tls = self.tls.context
            server.ssl_context = self.tls.context
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="onedrive-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and delete the temporary folders."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.tls is not None:
            self.tls.cleanup()
            self.tls = None
        self.state.close()

    def __enter__(self) -> EmulatorServer:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()
