"""Stream request bodies to disk in chunks (never the whole body in memory), hashing on the way."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import IO

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

    The socket is shut down only when werkzeug starts sending the body, after the request log
    entry was written: a client that retries at once then always finds the drop logged first.
    The body raises ``ConnectionAbortedError`` before a byte is written, which werkzeug treats as
    a dropped connection: no status line ever reaches the client.
    """
    sock = request.environ.get("werkzeug.socket")
    g.dropped = True

    def body() -> Iterator[bytes]:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise ConnectionAbortedError("the emulator dropped this connection on purpose")
        yield b""  # pragma: no cover

    return Response(body(), status=500)
