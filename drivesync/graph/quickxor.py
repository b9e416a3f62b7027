"""quickXorHash, the content hash OneDrive reports in ``file.hashes.quickXorHash``.

Algorithm: https://learn.microsoft.com/onedrive/developer/code-snippets/quickxorhash
Byte ``p`` of the stream is XORed into a 160-bit circular register at bit ``(11 * p) % 160``;
finally the stream length (64-bit little-endian) is XORed into the register's last 8 bytes.

Bytes 160 apart land on the same bit, so the register only depends on 160 "lanes": the XOR of
every byte with the same position modulo 160. numpy folds the lanes column-wise (GB/s), so
hashing while uploading costs far less than the network does.
"""

from __future__ import annotations

import base64

import numpy as np

WIDTH_BYTES = 20  # 160 bits
LANES = 160
SHIFT = 11
_MASK = (1 << 160) - 1


def _fold(buf: memoryview) -> int:
    """XOR every 160-byte block of ``buf`` (a multiple of 160 long) into one 160-byte int."""
    if not len(buf):
        return 0
    # 160 bytes = 20 little-endian 64-bit words; numpy reduces the columns at memory speed.
    words = np.frombuffer(buf, dtype="<u8").reshape(-1, LANES // 8)
    return int.from_bytes(np.bitwise_xor.reduce(words, axis=0).astype("<u8").tobytes(), "little")


class QuickXorHash:
    """Incremental quickXorHash: ``update()`` with chunks, then ``digest()`` or ``b64digest()``."""

    name = "quickxorhash"
    digest_size = WIDTH_BYTES

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._lanes = 0  # 160 bytes, little-endian: byte j is lane j
        self._length = 0
        if data:
            self.update(data)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` to the hash."""
        view = memoryview(data).cast("B")
        n = len(view)
        if not n:
            return
        offset = self._length % LANES
        head = min(n, (LANES - offset) % LANES)
        if head:  # finish the partial block the previous update left open
            self._lanes ^= int.from_bytes(view[:head], "little") << (8 * offset)
        bulk_end = head + (n - head) // LANES * LANES
        lanes = self._lanes ^ _fold(view[head:bulk_end])
        if bulk_end < n:  # start a new partial block at lane 0
            lanes ^= int.from_bytes(view[bulk_end:], "little")
        self._lanes = lanes
        self._length += n

    def digest(self) -> bytes:
        """Return the 20-byte hash of everything added so far."""
        lanes = self._lanes.to_bytes(LANES, "little")
        register = 0
        for j, value in enumerate(lanes):
            if value:
                s = (SHIFT * j) % 160
                register ^= ((value << s) | (value >> (160 - s))) & _MASK
        out = bytearray(register.to_bytes(WIDTH_BYTES, "little"))
        for i, b in enumerate(self._length.to_bytes(8, "little")):
            out[WIDTH_BYTES - 8 + i] ^= b
        return bytes(out)

    def b64digest(self) -> str:
        """Return the hash as OneDrive shows it: base64 of the 20 bytes."""
        return base64.b64encode(self.digest()).decode("ascii")

    def copy(self) -> QuickXorHash:
        """Return an independent copy of this hash state."""
        other = QuickXorHash()
        other._lanes, other._length = self._lanes, self._length
        return other


def quickxor_file(path: str, chunk_size: int = 4 * 1024 * 1024) -> str:
    """Return the base64 quickXorHash of the file at ``path``, reading it in chunks."""
    h = QuickXorHash()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.b64digest()
