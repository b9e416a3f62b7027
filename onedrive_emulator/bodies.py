"""Stream request bodies to disk in chunks (never the whole body in memory), hashing on the way."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import IO, Any

from flask import Response, g, request
from werkzeug.exceptions import ClientDisconnected

from drivesync.graph.quickxor import QuickXorHash

CHUNK = 1024 * 1024


class Incomplete(Exception):
    """The client sent fewer bytes than it announced (or the connection went away)."""


def copy_body(fh: IO[bytes], limit: int | None, hasher: QuickXorHash, max_bytes: int) -> int:
    """Copy the request body into ``fh``; return the byte count.

    ``limit`` is the announced Content-Length (None for chunked bodies). Raises
    :class:`Incomplete` on a short body and ``OverflowError`` past ``max_bytes``.
    """
    stream = request.stream
    copied = 0
    while limit is None or copied < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - copied)
        try:
            chunk = stream.read(want)
        except (ClientDisconnected, OSError) as exc:
            raise Incomplete from exc
        if not chunk:
            if limit is None:
                break
            raise Incomplete
        copied += len(chunk)
        if copied > max_bytes:
            raise OverflowError
        fh.write(chunk)
        hasher.update(chunk)
    return copied


def read_and_discard(nbytes: int) -> None:
    """Read up to ``nbytes`` of the body and throw them away."""
    left = nbytes
    while left > 0:
        try:
            chunk = request.stream.read(min(CHUNK, left))
        except (ClientDisconnected, OSError):
            return
        if not chunk:
            return
        left -= len(chunk)


def drop_connection() -> Response:
    """Close the client's socket without an answer (werkzeug's server only).

    Over TLS no ``close_notify`` is sent (``SSLSocket.shutdown`` drops the TLS layer first), so
    the client meets a bare TCP FIN: what a crashed front end or a cut link looks like.
    """
    return _abort(reset=False)


def reset_connection() -> Response:
    """Abort the client's connection with an RST (``SO_LINGER`` 0), without an answer."""
    return _abort(reset=True)


def wants_reset(sock: Any) -> bool:
    """Return whether :func:`reset_connection` marked ``sock`` for an abortive close."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER.size)
    except (OSError, AttributeError):
        return False  # closed, or detached after the TLS wrap took its descriptor over
    return bool(_LINGER.unpack(raw) == (1, 0))


_LINGER = struct.Struct("ii")


def _abort(*, reset: bool) -> Response:
    """Return a response whose body cuts the connection instead of sending anything.

    The socket is cut only when werkzeug starts sending the body, after the request log entry
    was written: a client that retries at once then always finds the cut logged first. The body
    raises ``ConnectionAbortedError`` before a byte is written, which werkzeug treats as a
    dropped connection: no status line ever reaches the client. For a reset, the read side is
    shut (so werkzeug stops draining the request body) and ``SO_LINGER`` 0 makes the server's
    close (``EmulatorServer``) an RST.
    """
    sock = request.environ.get("werkzeug.socket")
    g.dropped = True
    g.cut = "reset" if reset else "drop"

    def body() -> Iterator[bytes]:
        if sock is not None:
            try:
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER.pack(1, 0))
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise ConnectionAbortedError("the emulator cut this connection on purpose")
        yield b""  # pragma: no cover

    return Response(body(), status=500)
