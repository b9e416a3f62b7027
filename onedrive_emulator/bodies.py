"""Stream request bodies to disk in chunks (never the whole body in memory), hashing on the way."""

from __future__ import annotations

import os
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
    """Close the client's connection without an answer (werkzeug's server only).

    Over TLS no ``close_notify`` is sent: the client meets a bare TCP FIN (then an RST if it
    keeps sending), what a crashed front end or a cut link looks like.
    """
    return _abort(reset=False)


def reset_connection() -> Response:
    """Abort the client's connection with an RST (``SO_LINGER`` 0), without an answer."""
    return _abort(reset=True)


_LINGER_ABORT = struct.pack("ii", 1, 0)


def _sever(sock: Any, *, reset: bool) -> None:
    """Cut ``sock``'s TCP connection now, leaving werkzeug a harmless dead socket to close.

    ``shutdown`` drops the TLS layer without ``close_notify`` (and, for a drop, sends the FIN);
    then a socketpair end whose peer is gone is ``dup2``-ed over the descriptor, which releases
    the connection at once (an RST with ``SO_LINGER`` 0, or when unread body bytes remain) while
    werkzeug's later reads see EOF instead of the rest of the body or someone else's socket.
    """
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    try:
        sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
    except OSError:
        pass
    dead, peer = socket.socketpair()
    peer.close()
    try:
        os.dup2(dead.fileno(), sock.fileno())
    finally:
        dead.close()


def _abort(*, reset: bool) -> Response:
    """Return a response whose body cuts the connection instead of sending anything.

    The connection is cut only when werkzeug starts sending the body, after the request log
    entry was written: a client that retries at once then always finds the cut logged first.
    The body raises ``ConnectionAbortedError`` before a byte is written, which werkzeug treats
    as a dropped connection: no status line ever reaches the client.
    """
    sock = request.environ.get("werkzeug.socket")
    g.dropped = True
    g.cut = "reset" if reset else "drop"

    def body() -> Iterator[bytes]:
        if sock is not None:
            _sever(sock, reset=reset)
        raise ConnectionAbortedError("the emulator cut this connection on purpose")
        yield b""  # pragma: no cover

    return Response(body(), status=500)
