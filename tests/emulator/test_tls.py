"""The emulator over HTTPS: certificate names, trust, clean closes versus cuts, and the CLI."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import certifi
import pytest
import requests

from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer

from .conftest import Env

pytestmark = pytest.mark.emulator


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def raw_get(env: Env, path: str, host: str = "127.0.0.1") -> tuple[bytes, BaseException | None]:
    """GET ``path`` over a raw TLS socket that reports a missing close_notify as an error."""
    port = int(env.url.rsplit(":", 1)[1])
    context = env.ssl_context()
    assert context is not None
    with socket.create_connection((host, port), timeout=5) as raw:
        conn = context.wrap_socket(raw, server_hostname=host, suppress_ragged_eofs=False)
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except (ssl.SSLError, OSError) as exc:
            return received, exc
        finally:
            conn.close()
    return received, None


@pytest.fixture
def tls_env(env: Env) -> Env:
    """The package's emulator, which must be serving HTTPS for these tests."""
    if env.server.tls is None:
        pytest.skip("DRIVESYNC_TEST_EMULATOR_TLS=0: the emulator serves plain HTTP")
    return env


def test_certificate_names_and_trust_files() -> None:
    """A TLS server's certificate is valid for 127.0.0.1, localhost and ::1 under its own CA."""
    hosts = ["127.0.0.1", "localhost"] + (["::1"] if _ipv6_loopback() else [])
    for host in hosts:
        with EmulatorServer(host, 0, tls=True) as server:
            assert server.url.startswith("https://")
            assert server.ca_file and Path(server.ca_file).read_bytes().startswith(b"-----BEGIN")
            bundle = Path(server.bundle_file or "").read_bytes()
            assert bundle.startswith(Path(certifi.where()).read_bytes())
            assert bundle.endswith(Path(server.ca_file).read_bytes())
            health = f"{server.url}/_emulator/health"
            assert requests.get(health, verify=server.ca_file, timeout=5).json() == {"ok": True}
            folder = Path(server.ca_file).parent
        assert not folder.exists(), "stop() must delete the certificate folder"


def test_untrusted_and_plain_http_clients_are_refused(tls_env: Env) -> None:
    """A client without the CA fails verification, and plain HTTP gets no answer."""
    with pytest.raises(requests.exceptions.SSLError) as info:
        requests.get(f"{tls_env.url}/_emulator/health", verify=certifi.where(), timeout=5)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(tls_env.url.replace("https://", "http://") + "/_emulator/health", timeout=5)
    assert requests.get(f"{tls_env.url}/_emulator/health", timeout=5).ok  # and it still serves


def test_answers_end_with_close_notify_but_cuts_do_not(tls_env: Env) -> None:
    """A normal answer ends with a TLS close_notify; a dropped connection ends without one."""
    body, error = raw_get(tls_env, "/_emulator/health")
    assert error is None and body.startswith(b"HTTP/1.1 200") and body.endswith(b'{"ok":true}\n')
    tls_env.admin.drop_connection(1, target="graph")
    body, error = raw_get(tls_env, "/v1.0/me")
    assert body == b"" and isinstance(error, ssl.SSLEOFError)


def test_reset_is_an_rst(tls_env: Env) -> None:
    """A reset fault aborts the TCP connection (RST), which TLS clients see as an EOF error."""
    tls_env.admin.reset_connection(1, target="graph")
    body, error = raw_get(tls_env, "/v1.0/me")
    assert body == b"" and isinstance(error, ssl.SSLEOFError)
    (entry,) = [e for e in tls_env.admin.requests_log() if e["path"] == "/v1.0/me"]
    assert (entry["status"], entry["cut"]) == (0, "reset")


def test_reset_over_plain_http_is_connection_reset() -> None:
    """Over plain HTTP the same fault reaches the client as ECONNRESET."""
    with EmulatorServer() as server:
        server.state.faults.arm("reset", "graph", 1)
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /v1.0/me HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                conn.recv(1024)


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "onedrive_emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DRIVESYNC_ENV": "development"},
    )


def test_cli_tls_prints_the_ca_and_cleans_up_on_sigterm() -> None:
    """``--tls`` serves HTTPS, prints the CA and bundle paths, and removes them on SIGTERM."""
    proc = _start_cli("--tls", "--latency-ms", "40")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" on ", 1)[1].split(" ", 1)[0]
        ca_line = proc.stdout.readline()
        assert url.startswith("https://127.0.0.1:") and ca_line.startswith("CA certificate: ")
        ca_file = ca_line.split()[2]
        bundle = ca_line.split("REQUESTS_CA_BUNDLE=", 1)[1].split()[0]
        assert requests.get(f"{url}/_emulator/health", verify=bundle, timeout=5).ok
        admin = EmulatorAdmin(url, verify=ca_file)  # wins over REQUESTS_CA_BUNDLE, if set
        try:
            assert admin.latency() == 40
        finally:
            admin.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert not Path(ca_file).parent.exists()


def test_second_start_is_refused() -> None:
    """Starting a running emulator again raises instead of leaking a second server."""
    with EmulatorServer(tls=True) as server:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
