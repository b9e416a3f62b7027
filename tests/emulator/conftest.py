"""Fixtures: one emulator per test session on a real socket, reset before every test."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPSConnection
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.fixtures_emulator import EmulatorCA, new_emulator

CLIENT_ID = "11112222-bbbb-3333-cccc-4444dddd5555"
CLIENT_SECRET = "s3cr3t-value"
REDIRECT_URI = "http://localhost:5000/onedrive/callback"
ALEX = "alex@contoso.example"
MEGAN = "megan@fabrikam.example"


@dataclass
class Env:
    """What a test needs: the server, the admin client, and helpers."""

    server: EmulatorServer
    admin: EmulatorAdmin

    @property
    def url(self) -> str:
        return self.server.url

    def connection(self, timeout: float = 5) -> HTTPConnection:
        """Return a raw HTTP(S) connection to the emulator, for requests ``requests`` won't send."""
        parts = urlsplit(self.url)
        if self.server.tls:
            return HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout, context=self.ssl_context()
            )
        return HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def ssl_context(self) -> ssl.SSLContext | None:
        """Return a client context trusting the emulator's CA (None over plain HTTP)."""
        return ssl.create_default_context(cafile=self.server.ca_file) if self.server.tls else None

    @property
    def graph(self) -> str:
        return f"{self.server.url}/v1.0"

    def token(self, email: str = ALEX, scopes: str = "offline_access User.Read Files.ReadWrite"):
        return self.admin.mint_token(email, CLIENT_ID, scopes)

    def session(self, email: str = ALEX) -> requests.Session:
        """Return a requests session carrying a fresh bearer token for ``email``."""
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.token(email)['access_token']}"
        return s


@pytest.fixture(scope="session")
def emulator_server(emulator_ca: EmulatorCA | None) -> Iterator[EmulatorServer]:
    """This package's own emulator, over HTTPS signed by the session's CA (by default)."""
    with new_emulator(emulator_ca, clients=[(CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI])]) as s:
        yield s


@pytest.fixture
def env(emulator_server: EmulatorServer) -> Iterator[Env]:
    admin = EmulatorAdmin(emulator_server.url)
    admin.reset()
    yield Env(emulator_server, admin)
    admin.close()


@pytest.fixture
def http(env: Env) -> Iterator[requests.Session]:
    s = env.session()
    yield s
    s.close()


def pkce_pair() -> tuple[str, str]:
    """Return (verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.decode().rstrip("=")


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh event loop in its own thread.

    pytest-playwright's sync API keeps an event loop running in the main thread for the rest of
    the session once a browser test has run, and ``asyncio.run`` refuses to nest in it.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
