"""Regression tests for the security probe's remaining findings (L4-L9, I2, I3, I7-I9).

Each test names its finding; each failed against the main branch the probe examined.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from werkzeug.serving import make_server

from drivesync.config import ConfigError, load_config, validate_config
from drivesync.extensions import db
from drivesync.graph.client import GraphClient
from drivesync.graph.errors import GraphError
from drivesync.models import Integration
from drivesync.scope import user_scope
from drivesync.services.storage import LocalStorage
from tests.conftest import ROOT, csrf_token, upload_payload
from tests.fixtures_emulator import ALEX, query
from tests.unit.test_config import GOOD_PROD


@pytest.fixture
def alice(make_user, login) -> int:
    """A signed-in user."""
    uid = make_user("alice@example.com")
    login(uid)
    return uid


@pytest.fixture
def on_emulator(app, emulator_config) -> dict[str, Any]:
    """Point the app at the test emulator."""
    app.config.update(emulator_config)
    return emulator_config


def _folder_id(app, uid: int) -> str:
    with app.app_context(), user_scope(uid):
        return db.session.execute(db.select(Integration.folder_id)).scalar_one()


class _Listener:
    """A loopback HTTP server standing in for an internal service; records what reaches it."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                listener.paths.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"INTERNAL-ONLY")

            do_PUT = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    """An internal service on loopback."""
    server = _Listener()
    yield server
    server.server.shutdown()
    server.server.server_close()


# -- L4 ------------------------------------------------------------------------------------------


@pytest.mark.emulator
def test_l4_browse_link_with_dot_segments_is_refused(app, client, alice, on_emulator, connect, emu):
    """A next link that walks out of the folder with ``..`` is 404 and lists nothing (L4)."""
    connect(ALEX)
    emu.modify_item(ALEX, "/outside-secret.txt", b"x")
    emu.modify_item(ALEX, "/Private/diagnosis.pdf", b"x")
    folder = _folder_id(app, alice)
    graph = on_emulator["GRAPH_URL"]
    for link in (
        f"{graph}/me/drive/items/{folder}/children/../../root/children",
        f"{graph}/me/drive/items/{folder}/children/../../root:/Private:/children",
        f"{graph}/me/drive/items/{folder}/children/%2e%2e/%2e%2e/root/children",
        f"{graph}/me/drive/root/children?x=/items/{folder}/children",
        f"{graph}/me/drive/items/{folder}/children/x/../../../../me",
    ):
        r = client.get("/settings/onedrive/browse", query_string={"next": link})
        assert r.status_code == 404, link
        body = r.get_data(as_text=True)
        assert "outside-secret.txt" not in body and "diagnosis.pdf" not in body
    ok = f"{graph}/me/drive/items/{folder}/children?$top=2&$skiptoken=0"
    assert client.get("/settings/onedrive/browse", query_string={"next": ok}).status_code == 200


# -- L5 ------------------------------------------------------------------------------------------


@pytest.mark.emulator
def test_l5_the_app_graph_client_refuses_loopback_urls(app, alice, on_emulator, connect, listener):
    """The Graph client the app uses will not fetch a pre-authenticated URL on loopback (L5)."""
    from drivesync.services.integrations import graph_client_for

    connect(ALEX)
    with app.app_context(), user_scope(alice):
        graph, _ = graph_client_for(alice)
        for method in ("GET", "PUT"):
            with pytest.raises(requests.exceptions.ConnectionError):
                graph.plain_session.request(method, listener.url + "/internal/admin", timeout=5)
        graph.close()
    assert listener.paths == []


GRAPH = "https://graph.microsoft.com/v1.0"


def _policed_client() -> GraphClient:
    from drivesync.graph import urls

    client = GraphClient(lambda force: "token", base_url=GRAPH)
    urls.enforce(client.plain_session, urls.UrlPolicy(GRAPH))
    return client


@responses.activate
@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:5399/internal/admin",
        "https://127.0.0.1/internal",
        "https://[::1]/x",
        "https://169.254.169.254/latest/meta-data",
        "https://10.1.2.3/x",
        "http://public.bn.files.1drv.com/x",  # plain http
        "https://evil.example/x",
        "https://sharepoint.com.evil.example/x",
        "https://user:pw@contoso.sharepoint.com/x",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
    ],
)
def test_l5_download_location_outside_the_allowed_hosts_is_refused(location):
    """A download redirect to another host, scheme or an address is a permanent GraphError."""
    responses.add(
        responses.GET, f"{GRAPH}/me/drive/items/I/content", status=302,
        headers={"Location": location},
    )  # fmt: skip
    with pytest.raises(GraphError) as err:
        _policed_client().download("I", io.BytesIO())
    assert err.value.retryable is False
    assert location not in str(err.value)
    assert len(responses.calls) == 1  # nothing was fetched from the Location


@responses.activate
def test_l5_every_redirect_hop_is_checked():
    """An allowed content host that redirects to loopback is refused at that hop (L5)."""
    first = "https://public.bn.files.1drv.com/dl/abc"
    responses.add(
        responses.GET, f"{GRAPH}/me/drive/items/I/content", status=302, headers={"Location": first}
    )
    responses.add(responses.GET, first, status=302, headers={"Location": "http://127.0.0.1:6379/"})
    with pytest.raises(GraphError):
        _policed_client().download("I", io.BytesIO())
    assert [c.request.url for c in responses.calls][-1] == first


@responses.activate
def test_l5_microsoft_content_hosts_are_fetched():
    """Downloads from Microsoft's content hosts still work."""
    target = "https://my.microsoftpersonalcontent.com/personal/x/_layouts/download?tempauth=T"
    responses.add(
        responses.GET, f"{GRAPH}/me/drive/items/I/content", status=302,
        headers={"Location": target},
    )  # fmt: skip
    responses.add(responses.GET, target.split("?")[0], body=b"hello")
    out = io.BytesIO()
    assert _policed_client().download("I", out) == 5 and out.getvalue() == b"hello"


def test_l5_upload_url_outside_the_allowed_hosts_is_not_sent_bytes(listener):
    """An uploadUrl on loopback receives no PUT of the user's bytes (L5)."""
    client = _policed_client()
    with pytest.raises(requests.exceptions.ConnectionError):
        client.plain_session.put(listener.url + "/upload-sink/S", data=b"secret", timeout=5)
    assert listener.paths == []


# -- L6 ------------------------------------------------------------------------------------------


def test_l6_downloads_and_pages_carry_cross_origin_resource_policy(client, alice, make_file):
    """No other site can embed a download or a page (CORP: same-origin) (L6)."""
    fid = make_file(alice, "scan.png", b"\x89PNG")
    for path in (f"/library/{fid}/download", "/library/", "/login"):
        with client.get(path) as r:
            assert r.headers["Cross-Origin-Resource-Policy"] == "same-origin", path


# -- L8 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/library/99999999999999999999999/download"),
        ("GET", "/library/2147483648/download"),
        ("POST", "/library/99999999999999999999999/delete"),
        ("POST", "/settings/onedrive/files/99999999999999999999999/retry"),
    ],
)
def test_l8_overlong_ids_are_not_found(client, alice, method, path):
    """An id no database integer can hold is a 404, not a 500 (L8)."""
    r = client.open(path, method=method, data={"csrf_token": csrf_token(client)})
    assert r.status_code == 404


@pytest.mark.parametrize(
    "nxt", ["/\u3002evil", "/\u2028/x", "/\x7f/x", "/\uff0f\uff0fx", "/caf\u00e9"]
)
def test_l8_htmx_sign_in_redirect_header_is_ascii(client, make_user, nxt):
    """An htmx sign-in with a non-ASCII or control ``next`` answers a Latin-1-safe HX-Redirect."""
    make_user("hx@example.com")
    token = csrf_token(client, "/login")
    r = client.post(
        "/login",
        data={"csrf_token": token, "email": "hx@example.com", "password": "correct horse battery",
              "next": nxt},
        headers={"HX-Request": "true"},
    )  # fmt: skip
    assert r.status_code == 204
    target = r.headers["HX-Redirect"]
    assert target.isascii() and target.isprintable() and target.startswith("/")
    assert not target.startswith("//")


# -- L9 ------------------------------------------------------------------------------------------


def test_l9_storage_and_uploads_are_private_whatever_the_umask(app, client, alice, tmp_path):
    """Uploads and their folders are created 0600 / 0700 even under umask 022 (L9)."""
    old = os.umask(0o022)
    try:
        r = client.post(
            "/library/upload", data=upload_payload([("x.txt", b"health")], csrf_token(client))
        )
    finally:
        os.umask(old)
    assert r.status_code == 303
    root = tmp_path / "storage"
    stored = [p for p in root.iterdir() if p.is_file()]
    assert stored and all(p.stat().st_mode & 0o777 == 0o600 for p in stored)
    assert root.stat().st_mode & 0o777 == 0o700
    assert (root / ".incoming").stat().st_mode & 0o777 == 0o700
    incoming = LocalStorage(root).new_incoming()
    assert incoming.path.stat().st_mode & 0o777 == 0o600
    incoming.close()


@pytest.mark.slow
def test_l9_entry_points_make_new_files_private():
    """Importing wsgi (gunicorn's entry point) sets umask 077, so SQLite files are private."""
    env = {**os.environ, "DRIVESYNC_SECRET_KEY": "x" * 40}
    out = subprocess.run(
        [sys.executable, "-c", "import os, wsgi; print(oct(os.umask(0)))"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "0o77"
    assert "os.umask(0o077)" in (ROOT / "app.py").read_text()


# -- I2 ------------------------------------------------------------------------------------------


def _session_data(app, client) -> dict[str, Any]:
    serializer = app.session_interface.get_signing_serializer(app)
    return dict(serializer.loads(client.get_cookie("session").value))


def test_i2_pkce_verifier_is_not_readable_in_the_session_cookie(app, client, alice):
    """The session cookie holds the PKCE verifier sealed, not in clear (I2)."""
    from drivesync.services.integrations import vault

    app.config.update(MS_CLIENT_ID="client", MS_CLIENT_SECRET="secret")
    r = client.post("/settings/onedrive/connect", data={"csrf_token": csrf_token(client)})
    challenge = query(r.headers["Location"])["code_challenge"]
    stored = _session_data(app, client)["onedrive_oauth"]["verifier"]

    def s256(v: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=").decode()

    assert s256(stored) != challenge
    with app.app_context():
        assert s256(vault().decrypt(stored, f"pkce-verifier:{alice}")) == challenge


def test_i2_access_log_carries_no_code_state_or_link_tokens(app, caplog):
    """The development server's access log shows no OAuth code or state, nor mailed tokens."""
    caplog.set_level(logging.INFO, logger="werkzeug")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        for path in (
            "/settings/onedrive/callback?code=M.C5-SECRETCODE&state=STATE123",
            "/password/reset/RESETTOKEN.abc.def",
            "/signup/SIGNUPTOKEN.abc",
        ):
            requests.get(base + path, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert "/settings/onedrive/callback" in caplog.text  # the lines are there…
    for secret in ("SECRETCODE", "STATE123", "RESETTOKEN", "SIGNUPTOKEN"):
        assert secret not in caplog.text  # …without the secrets


# -- I3 ------------------------------------------------------------------------------------------


def test_i3_production_needs_a_fixed_redirect_uri_or_trusted_hosts():
    """Production refuses to take the OAuth redirect URI from a forwarded Host (I3)."""
    loose = {k: v for k, v in GOOD_PROD.items() if k != "DRIVESYNC_MS_REDIRECT_URI"}
    with pytest.raises(ConfigError, match="DRIVESYNC_MS_REDIRECT_URI or DRIVESYNC_TRUSTED_HOSTS"):
        validate_config(load_config(loose))
    validate_config(load_config({**loose, "DRIVESYNC_TRUSTED_HOSTS": "drivesync.example"}))


@pytest.mark.parametrize(
    "app_overrides", [{"PROXY_COUNT": 1, "TRUSTED_HOSTS": ["drivesync.example"]}]
)
def test_i3_a_forged_forwarded_host_is_refused(client):
    """With trusted hosts set, X-Forwarded-Host naming another site is a 400 (I3)."""
    r = client.get("/login", headers={"X-Forwarded-Host": "evil.example"})
    assert r.status_code == 400
    ok = client.get("/login", headers={"X-Forwarded-Host": "drivesync.example"})
    assert ok.status_code == 200


# -- I7 ------------------------------------------------------------------------------------------


def test_i7_callback_error_is_logged_without_line_breaks(app, client, alice, caplog):
    """A crafted ``error`` parameter cannot forge log lines (I7)."""
    app.config.update(MS_CLIENT_ID="client", MS_CLIENT_SECRET="secret")
    caplog.set_level(logging.INFO, logger="drivesync.views.onedrive")
    r = client.post("/settings/onedrive/connect", data={"csrf_token": csrf_token(client)})
    state = query(r.headers["Location"])["state"]
    client.get(
        "/settings/onedrive/callback",
        query_string={"state": state, "error": "bad\r\nINFO forged: admin signed in"},
    )
    [record] = [r for r in caplog.records if "failed" in r.getMessage()]
    assert "\n" not in record.getMessage() and "\r" not in record.getMessage()


# -- I8 ------------------------------------------------------------------------------------------


def test_i8_signed_in_pages_are_not_stored_by_caches(client, alice):
    """Every signed-in page says Cache-Control: no-store (I8); static files may be cached."""
    for path in ("/library/", "/settings/onedrive/", "/account/security"):
        assert "no-store" in client.get(path).headers.get("Cache-Control", ""), path
    with client.get("/static/app.css") as static:
        assert "no-store" not in static.headers.get("Cache-Control", "")


# -- I9 ------------------------------------------------------------------------------------------


@pytest.mark.emulator
def test_i9_browse_shows_names_without_bidi_overrides(
    app, client, alice, on_emulator, connect, emu
):
    """A OneDrive name with U+202E is shown without it, so it cannot pose as another type (I9)."""
    connect(ALEX)
    emu.modify_item(ALEX, "/drivesync/\u202egnp.exe", b"MZ")
    page = client.get("/settings/onedrive/browse").get_data(as_text=True)
    assert "\u202e" not in page
    assert re.search(r"gnp\.exe", page)
