"""A large upload streams to disk: the server's memory stays flat."""

from __future__ import annotations

import re
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
import requests
from werkzeug.serving import make_server

from drivesync.models import File
from tests.conftest import PASSWORD, db_rows

SIZE = 200 * 1024 * 1024
CHUNK = 1024 * 1024


def _multipart(token: str, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    block = bytes(range(256)) * (CHUNK // 256)
    for _ in range(SIZE // CHUNK):
        yield block
    yield f"\r\n--{boundary}--\r\n".encode()


class _Body:
    """A file-like request body of known length, so requests streams it without chunking."""

    def __init__(self, parts: Iterator[bytes], length: int) -> None:
        self._parts, self._length, self._buf = parts, length, b""

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._parts, None)
            if chunk is None:
                break
            self._buf += chunk
        out, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
        return out


@pytest.mark.slow
def test_200_mib_upload_keeps_memory_flat(app, make_user):
    """Uploading 200 MiB raises traced peak memory by well under 50 MiB."""
    uid = make_user("big@example.com")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        s = requests.Session()
        html = s.get(f"{base}/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
        r = s.post(
            f"{base}/login",
            data={"csrf_token": token, "email": "big@example.com", "password": PASSWORD},
            allow_redirects=False,
        )
        assert r.status_code == 303
        token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(f"{base}/library/").text)[1]
        boundary = "drivesyncboundary7MA4YWxkTrZu0gW"
        body_len = sum(len(part) for part in _multipart(token, boundary))
        tracemalloc.start()
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        r = s.post(
            f"{base}/library/upload",
            data=_Body(_multipart(token, boundary), body_len),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            allow_redirects=False,
        )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert r.status_code == 303, r.text[r.text.find("<main") :][:800]
    finally:
        server.shutdown()
    growth_mib = (peak - baseline) / 1024 / 1024
    print(f"peak traced memory growth for a 200 MiB upload: {growth_mib:.1f} MiB")
    assert growth_mib < 50
    [f] = db_rows(app, File, uid)
    assert (f.original_name, f.size) == ("big.bin", SIZE)
