"""Transport truth: which network failures are transient, from real and faithfully built errors.

``should_retry`` is the one decision; ``network_error`` must agree with it for every row. The
real rows come from a local TLS server (a ``trustme`` CA) that cuts connections mid-body, or
that the client must refuse (wrong CA, wrong host name, no shared protocol version).
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from drivesync.graph.client import GraphClient
from drivesync.graph.errors import GraphError, network_error
from drivesync.graph.retry import should_retry
from drivesync.graph.upload import FRAGMENT_MULTIPLE, upload_file

from .conftest import FakeUploadServer

URL = "https://127.0.0.1:1/up/s1"
BIG = 16 * 1024 * 1024  # more than any socket buffer: the server's cut lands mid-body


def _ssl(cls: type[ssl.SSLError], errno: int, reason: str | None, text: str) -> ssl.SSLError:
    """Build an ssl error with the ``reason``/``library`` attributes the ssl module sets."""
    err = cls(errno, text)
    if reason is not None:
        err.reason = reason  # the C module sets both when it raises
        err.library = "SSL"
    return err


def via_requests_ssl(cause: BaseException) -> requests.exceptions.SSLError:
    """Wrap ``cause`` as requests does for a TLS failure: SSLError(MaxRetryError(SSLError))."""
    pool_error = urllib3.exceptions.MaxRetryError(
        None,  # type: ignore[arg-type]  # urllib3 passes the pool; only reason matters here
        "/up/s1",
        reason=urllib3.exceptions.SSLError(cause),
    )
    return requests.exceptions.SSLError(pool_error)


def via_requests_aborted(cause: BaseException) -> requests.exceptions.ConnectionError:
    """Wrap ``cause`` as requests does for a socket error mid-request."""
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", cause)
    )


BUILT: list[tuple[str, BaseException, bool]] = [
    ("tls-eof", via_requests_ssl(
        _ssl(ssl.SSLEOFError, 8, "UNEXPECTED_EOF_WHILE_READING",
             "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol")), True),
    ("tls-zero-return", via_requests_ssl(
        _ssl(ssl.SSLZeroReturnError, 6, None, "TLS/SSL connection has been closed (EOF)")), True),
    ("tls-reset", via_requests_ssl(ConnectionResetError(104, "Connection reset by peer")), True),
    ("tls-bad-record-mac", via_requests_ssl(
        _ssl(ssl.SSLError, 1, "DECRYPTION_FAILED_OR_BAD_RECORD_MAC",
             "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed or bad record mac")),
     True),
    ("tls-syscall", via_requests_ssl(_ssl(ssl.SSLSyscallError, 5, None, "Some I/O error")), True),
    ("socket-reset", via_requests_aborted(ConnectionResetError(104, "reset")), True),
    ("broken-pipe", via_requests_aborted(BrokenPipeError(32, "Broken pipe")), True),
    ("read-timeout", requests.exceptions.ReadTimeout(
        urllib3.exceptions.ReadTimeoutError(None, URL, "Read timed out.")), True),  # type: ignore[arg-type]
    ("cut-response", requests.exceptions.ChunkedEncodingError(
        urllib3.exceptions.ProtocolError("Response ended prematurely")), True),
    ("cert-untrusted", via_requests_ssl(
        _ssl(ssl.SSLCertVerificationError, 1, "CERTIFICATE_VERIFY_FAILED",
             "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
             "unable to get local issuer certificate")), False),
    ("cert-hostname", via_requests_ssl(
        _ssl(ssl.SSLCertVerificationError, 1, "CERTIFICATE_VERIFY_FAILED",
             "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
             "Hostname mismatch, certificate is not valid for '127.0.0.1'.")), False),
    ("no-shared-cipher", via_requests_ssl(
        _ssl(ssl.SSLError, 1, "SSLV3_ALERT_HANDSHAKE_FAILURE",
             "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure")), False),
    ("protocol-version", via_requests_ssl(
        _ssl(ssl.SSLError, 1, "TLSV1_ALERT_PROTOCOL_VERSION",
             "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version")), False),
    ("ssl-error-without-cause", requests.exceptions.SSLError("bad cert"), False),
    ("invalid-url", requests.exceptions.InvalidURL("no host"), False),
]  # fmt: skip


@pytest.mark.parametrize(("exc", "transient"), [r[1:] for r in BUILT], ids=[r[0] for r in BUILT])
def test_built_transport_errors_are_classified(exc: BaseException, transient: bool) -> None:
    """Each failure built as requests raises it is transient or permanent, and both APIs agree."""
    assert should_retry(exc) == (transient, None)
    wrapped = network_error(exc)
    assert (wrapped.code, wrapped.retryable) == ("networkError", transient)
    assert should_retry(wrapped) == (transient, None)


def test_responses_are_classified_with_their_retry_after() -> None:
    """A 429/503 asks for a retry with the server's wait; 507 and other 4xx never retry."""

    def response(status: int, retry_after: str | None = None) -> requests.Response:
        resp = requests.Response()
        resp.status_code = status
        if retry_after is not None:
            resp.headers["Retry-After"] = retry_after
        return resp

    assert should_retry(response(429, "7")) == (True, 7.0)
    assert should_retry(response(503)) == (True, None)
    assert should_retry(response(507)) == (False, None)
    assert should_retry(response(409)) == (False, None)
    assert should_retry(GraphError("busy", status=429, retry_after=3)) == (True, 3.0)
    assert should_retry(KeyError("bug")) == (False, None)


# -- real failures from a local TLS server ---------------------------------------------------------


@dataclass
class Pki:
    """A throw-away CA with a certificate for 127.0.0.1, and another CA nobody trusts."""

    ca: trustme.CA
    ca_file: Path
    other_ca_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Two CAs written to PEM files."""
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    other.cert_pem.write_to_path(str(root / "other.pem"))
    return Pki(ca, root / "ca.pem", root / "other.pem")


Behaviour = Callable[[ssl.SSLSocket], None]


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[Callable[..., str]]:
    """Start a one-connection TLS server: ``start(behaviour, hosts=..., max_version=...)``."""
    threads: list[threading.Thread] = []

    def start(
        behaviour: Behaviour,
        hosts: tuple[str, ...] = ("127.0.0.1",),
        max_version: ssl.TLSVersion | None = None,
    ) -> str:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        pki.ca.issue_cert(*hosts).configure_cert(ctx)
        if max_version is not None:
            ctx.maximum_version = max_version
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def serve() -> None:
            with listener:
                conn, _ = listener.accept()
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        behaviour(tls)
                except (ssl.SSLError, OSError):
                    pass  # the handshake the client refused, or the cut we made

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return f"https://127.0.0.1:{port}/up/s1"

    yield start
    for thread in threads:
        thread.join(timeout=10)


def read_head(tls: ssl.SSLSocket) -> bytes:
    """Read the request up to the end of its headers."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def reset_after_some_body(tls: ssl.SSLSocket) -> None:
    """Take the headers and a little of the body, then reset the TCP connection (RST)."""
    read_head(tls)
    tls.recv(65536)
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def close_after_some_body(tls: ssl.SSLSocket) -> None:
    """Take the headers and a little of the body, then close without a TLS close_notify."""
    read_head(tls)
    tls.recv(65536)


def cut_response_body(tls: ssl.SSLSocket) -> None:
    """Answer with fewer body bytes than Content-Length promised, then close."""
    read_head(tls)
    tls.sendall(b'HTTP/1.1 202 Accepted\r\nContent-Length: 100000\r\n\r\n{"nextExpected')


def handshake_only(tls: ssl.SSLSocket) -> None:
    """Nothing to do: the client refuses the handshake."""


def tls_session(verify: Path, min_version: ssl.TLSVersion | None = None) -> requests.Session:
    """Return a session trusting ``verify`` only (never the environment's bundle)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(verify)
    if min_version is not None:
        ctx = ssl.create_default_context(cafile=str(verify))
        ctx.minimum_version = min_version

        class Adapter(HTTPAdapter):
            def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
                kwargs["ssl_context"] = ctx
                super().init_poolmanager(*args, **kwargs)

        session.mount("https://", Adapter())
    return session


def real_failure(session: requests.Session, url: str, body: bytes) -> BaseException:
    """Return the exception requests raises for this PUT (fail if it succeeds)."""
    with session:
        try:
            session.put(url, data=body, timeout=(5, 10)).close()
        except requests.exceptions.RequestException as exc:
            return exc
    raise AssertionError("the request unexpectedly succeeded")


@pytest.mark.parametrize(
    "behaviour",
    [reset_after_some_body, close_after_some_body, cut_response_body],
    ids=["reset-mid-body", "close-mid-body", "cut-response"],
)
def test_real_mid_transfer_drops_are_transient(
    tls_server: Callable[..., str], pki: Pki, behaviour: Behaviour
) -> None:
    """A TLS connection cut during the request or response body is a transient failure."""
    body = b"x" * (BIG if behaviour is not cut_response_body else 10)
    exc = real_failure(tls_session(pki.ca_file), tls_server(behaviour), body)
    assert should_retry(exc) == (True, None), repr(exc)
    assert network_error(exc).retryable


@pytest.mark.parametrize(
    ("verify", "hosts", "min_version", "max_version"),
    [
        ("other", ("127.0.0.1",), None, None),
        ("ca", ("example.org",), None, None),
        ("ca", ("127.0.0.1",), ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2),
    ],
    ids=["untrusted-ca", "hostname-mismatch", "no-shared-protocol"],
)
def test_real_certificate_and_configuration_failures_are_permanent(
    tls_server: Callable[..., str],
    pki: Pki,
    verify: str,
    hosts: tuple[str, ...],
    min_version: ssl.TLSVersion | None,
    max_version: ssl.TLSVersion | None,
) -> None:
    """A certificate that fails verification or a TLS setup with nothing in common is final."""
    url = tls_server(handshake_only, hosts=hosts, max_version=max_version)
    ca_file = pki.other_ca_file if verify == "other" else pki.ca_file
    exc = real_failure(tls_session(ca_file, min_version), url, b"x")
    assert isinstance(exc, requests.exceptions.SSLError)
    assert should_retry(exc) == (False, None), repr(exc)
    assert not network_error(exc).retryable


# -- the upload carries on after a real TLS drop ---------------------------------------------------


@pytest.fixture(scope="module")
def tls_drop(tls_server: Callable[..., str], pki: Pki) -> BaseException:
    """A real exception from a TLS connection reset in the middle of a request body.

    Module-scoped so it is made before ``responses`` takes over the transport in each test.
    """
    exc = real_failure(tls_session(pki.ca_file), tls_server(reset_after_some_body), b"x" * BIG)
    assert "Responses" not in str(exc)  # a real socket failure, not the mock's refusal
    return exc


@pytest.mark.parametrize("stored", [False, True], ids=["lost-before-store", "lost-after-store"])
@pytest.mark.parametrize("fault", ["tls-drop", "read-timeout"])
def test_fragment_cut_over_tls_asks_the_session_then_resumes(
    client: GraphClient,
    server: FakeUploadServer,
    tls_drop: BaseException,
    sleeps: list[float],
    tmp_path: Path,
    stored: bool,
    fault: str,
) -> None:
    """After a TLS drop or read timeout the session is asked, and only missing bytes are sent."""
    if fault == "read-timeout":
        tls_drop = {name: exc for name, exc, _ in BUILT}["read-timeout"]
    frag = 2 * FRAGMENT_MULTIPLE
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * (3 * frag // 256))
    server.faults = [None, ("after-store", tls_drop) if stored else tls_drop]
    result = upload_file(client, path, "PARENT", "data.bin", fragment_size=frag, simple_max=0)
    starts = [int(rng.split()[1].split("-")[0]) for _s, rng, _n in server.puts]
    resent = [frag] if not stored else []
    assert starts == [0, frag, *resent, 2 * frag]
    assert server.status_gets == ["s1"] and len(sleeps) == 1
    assert result.hash_matched and server.committed["data.bin"] == path.read_bytes()
