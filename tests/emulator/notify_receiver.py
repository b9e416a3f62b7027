"""A notification endpoint for emulator tests: HTTPS (signed by the session CA), recording."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from werkzeug.serving import BaseWSGIServer, make_server

from tests.fixtures_emulator import EmulatorCA


@dataclass
class Hit:
    """One request the receiver got."""

    path: str
    query: dict[str, str]
    content_type: str
    body: bytes


@dataclass
class Receiver:
    """Records every request; answers validation by echoing the token unless told otherwise."""

    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    validation: str = "echo"  # echo | wrong | slow | html (right token, wrong content type)
    fail_next: int = 0  # answer this many notifications with 500
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: BaseWSGIServer | None = None

    def app(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI app."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        hit = Hit(environ["PATH_INFO"], query, environ.get("CONTENT_TYPE", ""), body)
        with self.lock:
            self.hits.append(hit)
        token = query.get("validationToken")
        if token is not None:
            if self.validation == "slow":
                time.sleep(11)
            answer = token if self.validation != "wrong" else "not-the-token"
            kind = "text/html" if self.validation == "html" else "text/plain"
            start("200 OK", [("Content-Type", kind)])
            return [answer.encode()]
        with self.lock:
            failing = self.fail_next > 0
            self.fail_next -= 1 if failing else 0
        start("500 Internal Server Error" if failing else "202 Accepted", [])
        return [b""]

    def notifications(self, path: str = "/hook") -> list[dict[str, Any]]:
        """Every notification delivered to ``path`` so far (validation requests left out)."""
        with self.lock:
            hits = [h for h in self.hits if h.path == path and "validationToken" not in h.query]
        return [n for h in hits for n in json.loads(h.body)["value"]]

    def wait_for(self, count: int, path: str = "/hook", timeout: float = 10.0) -> list[dict]:
        """Wait until ``count`` notifications reached ``path``; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.notifications(path)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(self.notifications(path))} notification(s), wanted {count}")


def start_receiver(ca: EmulatorCA) -> Receiver:
    """Serve a Receiver over HTTPS on 127.0.0.1 with a certificate from ``ca``."""
    receiver = Receiver()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = make_server("127.0.0.1", 0, receiver.app, threaded=True, ssl_context=context)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver.server = server
    receiver.url = f"https://127.0.0.1:{server.server_port}"
    return receiver
