"""Run the emulator on a real socket in a background thread (tests, the embedded default)."""

from __future__ import annotations

import threading
from types import TracebackType

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import create_emulator_app
from .state import EmulatorState


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not print one line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


class EmulatorServer:
    """A threaded werkzeug server running the emulator in a daemon thread.

    ``clients`` pre-registers apps: ``[(client_id, client_secret, [redirect_uris]), ...]``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clients: list[tuple[str, str | None, list[str]]] | None = None,
        state: EmulatorState | None = None,
        quiet: bool = True,
    ) -> None:
        """Prepare (but do not start) the server."""
        self.host, self.port = host, port
        self.state = state or EmulatorState()
        for client_id, secret, uris in clients or []:
            self.state.register_client(client_id, secret, uris)
        self._quiet = quiet
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return f"http://{self.host}:{self._server.server_port}"

    def start(self) -> EmulatorServer:
        """Bind the socket and serve in a daemon thread."""
        app = create_emulator_app(self.state)
        handler = _QuietHandler if self._quiet else WSGIRequestHandler
        self._server = make_server(
            self.host, self.port, app, threaded=True, request_handler=handler
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="onedrive-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and delete the temporary folder."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
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
