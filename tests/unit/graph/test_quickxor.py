"""drivesync.graph.quickxor against published vectors and an independent implementation."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
import quickxorhash  # the C implementation on PyPI, used here only as an oracle

from drivesync.graph.quickxor import WIDTH_BYTES, QuickXorHash, quickxor_file

# Test vectors copied as data from rclone's quickxorhash_test.go; the JSON names the file and
# commit. Each is (size, input as base64, expected hash as base64).
_VECTORS_FILE = Path(__file__).parent / "data" / "rclone_quickxorhash_vectors.json"
VECTORS: list[tuple[int, str, str]] = [
    (size, data, want) for size, data, want in json.loads(_VECTORS_FILE.read_text())["vectors"]
]
# rclone's TestQuickXorHashByBlock block sizes.
RCLONE_BLOCK_SIZES = (1, 2, 4, 7, 8, 16, 32, 64, 128, 256, 512)

# The register is 20 bytes wide and byte p lands on bit 11*p mod 160, so the pattern repeats
# every 160 bytes (the implementation folds 160-byte blocks): probe both edges, and sizes up to
# a few MiB.
_EDGES = sorted(
    {0, 1, 2, 19, 20, 21, 39, 40, 41, 59, 60, 61, 79, 80, 81}
    | {n + d for n in (160, 320, 480, 1600, 4096, 65536, 1 << 20) for d in (-1, 0, 1)}
    | {(3 << 20) + 13, 5 << 20}
)


def _oracle(data: bytes) -> str:
    h = quickxorhash.quickxorhash()
    h.update(data)
    return base64.b64encode(h.digest()).decode("ascii")


def _random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut ``data`` at seeded random places: tiny pieces, block-sized ones and large ones."""
    chunks, i = [], 0
    while i < len(data):
        kind = rng.random()
        if kind < 0.4:
            n = rng.randint(1, 25)
        elif kind < 0.8:
            n = rng.randint(150, 170)
        else:
            n = rng.randint(1, 300_000)
        chunks.append(data[i : i + n])
        i += n
    return chunks


@pytest.mark.parametrize(("size", "data", "want"), VECTORS, ids=[f"{v[0]}B" for v in VECTORS])
def test_published_vectors_in_one_update(size: int, data: str, want: str) -> None:
    """Each rclone vector hashes to its published value when fed in one update."""
    raw = base64.b64decode(data)
    assert len(raw) == size
    assert QuickXorHash(raw).b64digest() == want


@pytest.mark.parametrize("block", RCLONE_BLOCK_SIZES)
def test_published_vectors_fed_in_blocks(block: int) -> None:
    """Each rclone vector hashes to its published value when fed ``block`` bytes at a time."""
    for size, data, want in VECTORS:
        raw = base64.b64decode(data)
        h = QuickXorHash()
        for i in range(0, len(raw), block):
            h.update(raw[i : i + block])
        assert h.b64digest() == want, f"size {size}, block {block}"


def test_published_vectors_agree_with_the_oracle() -> None:
    """The oracle package itself reproduces rclone's vectors, so it is a fair judge below."""
    for _size, data, want in VECTORS:
        assert _oracle(base64.b64decode(data)) == want


@pytest.mark.parametrize("size", _EDGES)
def test_matches_oracle_under_random_chunk_boundaries(size: int) -> None:
    """Random content of ``size`` bytes cut at seeded random places hashes as the oracle does."""
    rng = random.Random(size)  # seeded: a failure reproduces
    data = rng.randbytes(size)
    want = _oracle(data)
    for _round in range(3):
        h = QuickXorHash()
        for chunk in _random_chunks(data, rng):
            h.update(chunk)
        assert h.b64digest() == want, f"size {size}"


def test_every_split_point_of_a_short_stream() -> None:
    """Splitting 400 bytes into two updates at any point gives the one-shot hash."""
    data = random.Random(400).randbytes(400)
    want = _oracle(data)
    for cut in range(len(data) + 1):
        h = QuickXorHash(data[:cut])
        h.update(data[cut:])
        assert h.b64digest() == want, f"cut at {cut}"


def test_output_form_is_base64_of_twenty_bytes() -> None:
    """b64digest is standard padded base64 of the 20-byte digest, as Graph's quickXorHash is."""
    h = QuickXorHash(b"drivesync")
    text = h.b64digest()
    assert len(h.digest()) == WIDTH_BYTES == h.digest_size
    assert len(text) == 28 and text.endswith("=")
    assert base64.b64decode(text, validate=True) == h.digest()
    # Zero bytes leave the register empty: only the length remains, little-endian at the end.
    assert QuickXorHash(bytes(9)).digest() == bytes(12) + (9).to_bytes(8, "little")
    assert QuickXorHash().b64digest() == "AAAAAAAAAAAAAAAAAAAAAAAAAAA="


def test_accepts_bytearray_and_memoryview_and_ignores_empty_updates() -> None:
    """Any bytes-like input hashes the same, and an empty update changes nothing."""
    data = random.Random(7).randbytes(1000)
    want = _oracle(data)
    h = QuickXorHash()
    h.update(bytearray(data[:333]))
    h.update(b"")
    h.update(memoryview(data)[333:])
    assert h.b64digest() == want


def test_copy_is_independent() -> None:
    """A copy continues on its own; the original is unaffected by updates to the copy."""
    h = QuickXorHash(b"a" * 170)
    c = h.copy()
    c.update(b"b" * 10)
    assert h.b64digest() == _oracle(b"a" * 170)
    assert c.b64digest() == _oracle(b"a" * 170 + b"b" * 10)


@pytest.mark.parametrize("chunk_size", [1, 7, 160, 4 * 1024 * 1024])
def test_quickxor_file_reads_in_chunks(tmp_path: Path, chunk_size: int) -> None:
    """quickxor_file gives the oracle's hash whatever its read size."""
    data = random.Random(chunk_size).randbytes(5000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert quickxor_file(str(path), chunk_size=chunk_size) == _oracle(data)
