"""Fixtures for running the app against the local OneDrive emulator over real sockets.

The emulator serves HTTPS by default, the way Microsoft always does: one throw-away CA per test
session signs every emulator's certificate, and the CA is trusted the way production code would
trust a corporate root: ``REQUESTS_CA_BUNDLE`` and ``SSL_CERT_FILE`` point at certifi's roots plus
that CA, for this test process and the subprocesses it starts (the Celery worker). ``requests``
prefers ``REQUESTS_CA_BUNDLE`` over ``Session.verify``, so nothing in the product is told about
the CA. ``DRIVESYNC_TEST_EMULATOR_TLS=0`` runs the same tests over plain HTTP.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask.testing import FlaskClient

from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from onedrive_emulator.tls import new_ca, write_bundle

if TYPE_CHECKING:
    import trustme

CLIENT_ID = "drivesync-test-client"
CLIENT_SECRET = "drivesync-test-secret"
CALLBACK = "http://localhost/settings/onedrive/callback"
ALEX = "alex@contoso.example"
MEGAN = "megan@fabrikam.example"


EMULATOR_TLS = os.environ.get("DRIVESYNC_TEST_EMULATOR_TLS", "1") != "0"
TRUST_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


@dataclass(frozen=True)
class EmulatorCA:
    """The session's throw-away CA and the files that trust it."""

    ca: trustme.CA
    ca_file: Path  # the CA alone
    bundle_file: Path  # certifi's roots + the CA (what REQUESTS_CA_BUNDLE points at)


@pytest.fixture(scope="session")
def emulator_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorCA | None]:
    """Trust one throw-away CA for the rest of the session (None when TLS is switched off)."""
    if not EMULATOR_TLS:
        yield None
        return
    ca = new_ca()
    folder = tmp_path_factory.mktemp("emulator-ca")
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    bundle = Path(write_bundle(ca.cert_pem.bytes(), str(folder / "bundle.pem")))
    saved = {name: os.environ.get(name) for name in TRUST_VARIABLES}
    os.environ.update(dict.fromkeys(TRUST_VARIABLES, str(bundle)))
    try:
        yield EmulatorCA(ca, ca_file, bundle)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def new_emulator(emulator_ca: EmulatorCA | None, **kwargs: Any) -> EmulatorServer:
    """Return an emulator (not started) serving HTTPS with the session's CA, or plain HTTP."""
    ca = emulator_ca.ca if emulator_ca else None
    # Change notifications go to test servers whose certificates the same CA signs.
    kwargs.setdefault("notify_ca", str(emulator_ca.ca_file) if emulator_ca else None)
    return EmulatorServer(tls=ca is not None, ca=ca, **kwargs)


@pytest.fixture(scope="session")
def emulator(emulator_ca: EmulatorCA | None) -> Iterator[EmulatorServer]:
    """One emulator for the session (HTTPS by default), with the test app registered."""
    with new_emulator(emulator_ca, clients=[(CLIENT_ID, CLIENT_SECRET, [CALLBACK])]) as server:
        yield server


@pytest.fixture
def emu(emulator: EmulatorServer) -> Iterator[EmulatorAdmin]:
    """The emulator's admin API, reset before the test."""
    admin = EmulatorAdmin(emulator.url)
    admin.reset()
    yield admin
    admin.clear_faults()
    admin.close()


@pytest.fixture
def emulator_config(emulator: EmulatorServer) -> dict[str, Any]:
    """App configuration pointing at the emulator."""
    return {
        "MS_CLIENT_ID": CLIENT_ID,
        "MS_CLIENT_SECRET": CLIENT_SECRET,
        "MS_AUTHORITY": emulator.url,
        "GRAPH_URL": emulator.url + "/v1.0",
        "EMULATOR_URL": emulator.url,
        "UPLOAD_FRAGMENT_MB": 5,
    }


def consent(authorize_url: str, email: str = ALEX, accept: bool = True) -> str:
    """Play the user on the emulator's consent page; return the redirect back to the app."""
    with requests.Session() as s:
        page = s.get(authorize_url, timeout=10)
        assert page.status_code == 200, page.text[:300]
        request_id = re.search(r'name="request_id" value="([^"]+)"', page.text).group(1)
        r = s.post(
            page.url,
            data={
                "request_id": request_id,
                "account": email,
                "action": "accept" if accept else "cancel",
            },
            allow_redirects=False,
            timeout=10,
        )
    assert r.status_code in (302, 303), r.text[:300]
    return r.headers["Location"]


def csrf_from(html: str) -> str:
    """Return the first CSRF token in a page."""
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


@pytest.fixture
def connect(client: FlaskClient) -> Callable[..., Any]:
    """Run the whole Connect flow for the signed-in user through the emulator."""

    def _connect(email: str = ALEX, accept: bool = True) -> Any:
        token = csrf_from(client.get("/settings/onedrive/").get_data(as_text=True))
        r = client.post("/settings/onedrive/connect", data={"csrf_token": token})
        assert r.status_code == 303, r.get_data(as_text=True)[:300]
        back = consent(r.headers["Location"], email, accept)
        parts = urlsplit(back)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == CALLBACK
        return client.get(f"{parts.path}?{parts.query}")

    return _connect


def query(url: str) -> dict[str, str]:
    """Return the query parameters of ``url``."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def connected_user(app: Any, make_user: Callable[..., int], client: Any) -> int:
    """Create a user whose integration points at Alex's drive, skipping the OAuth dance.

    ``client`` is a GraphClient on the emulator; it creates the target folder and is closed.
    """
    from drivesync.extensions import db
    from drivesync.models import Integration
    from drivesync.scope import user_scope

    uid = make_user()
    try:
        folder = client.ensure_folder("drivesync")
    finally:
        client.close()
    with app.app_context(), user_scope(uid):
        db.session.add(Integration(user_id=uid, folder_id=folder["id"], drive_type="personal",
                                   account_email=ALEX))  # fmt: skip
        db.session.commit()
    return uid
