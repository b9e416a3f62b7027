"""Sign-in errors from the emulator's token endpoint, end to end: what the user and operator see."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from flask import Flask

from drivesync.extensions import db
from drivesync.graph import oauth
from drivesync.graph.errors import AuthError
from drivesync.graph.retry import Pacer
from drivesync.models import Integration, OAuthToken, utcnow
from drivesync.scope import user_scope
from drivesync.services import integrations
from onedrive_emulator.client import EmulatorAdmin
from onedrive_emulator.server import EmulatorServer
from tests.integration.conftest import ALEX, CLIENT_ID, CLIENT_SECRET, MEGAN

pytestmark = pytest.mark.emulator

TOKEN_PATH = "/common/oauth2/v2.0/token"


def inject(server: EmulatorServer, **fault: Any) -> None:
    """Make the emulator's token endpoint answer an error (identity.py's admin route)."""
    r = requests.post(f"{server.url}/_emulator/faults/token-error", json=fault, timeout=10)
    r.raise_for_status()


@pytest.fixture
def connected(
    client: Any,
    app: Flask,
    make_user: Callable[..., int],
    login: Callable[[int], None],
    connect: Any,
) -> tuple[int, int]:
    """A user connected to Alex's drive through the real Connect flow, access token expired."""
    uid = make_user("owner@example.com")
    login(uid)
    assert connect(ALEX).status_code == 303
    with app.app_context(), user_scope(uid):
        db.session.execute(db.update(OAuthToken).values(expires_at=utcnow() - timedelta(1)))
        db.session.commit()
        integration = integrations.get_integration(uid)
        assert integration is not None
        return uid, integration.id


@pytest.fixture(autouse=True)
def _no_operator_notice() -> Iterator[None]:
    """The operator notice is process state: start and end each test without one."""
    integrations._clear_operator_notice()
    yield
    integrations._clear_operator_notice()


def call_graph(app: Flask, uid: int) -> dict[str, Any]:
    """Call /me for the user the way the product does (refreshing the expired token first)."""
    with app.app_context(), user_scope(uid):
        graph, _integration = integrations.graph_client_for(uid)
        try:
            return dict(graph.me())
        finally:
            graph.close()


def integration_of(app: Flask, uid: int) -> Integration:
    """Return the user's integration as stored."""
    with app.app_context(), user_scope(uid):
        integration = integrations.get_integration(uid)
        assert integration is not None
        db.session.expunge(integration)
        return integration


def token_requests(emu: EmulatorAdmin) -> list[int]:
    """Return the statuses the token endpoint answered, in order."""
    return [e["status"] for e in emu.requests_log() if e["path"] == TOKEN_PATH]


@pytest.mark.parametrize(
    ("code", "reason", "words"),
    [
        (700082, "refresh_token_inactive", "90 days"),
        (50173, "grant_revoked", "password was changed"),
        (65001, "consent_missing", "accept the permissions"),
    ],
)
def test_user_codes_mark_reconnect_needed_with_their_sentence(
    app: Flask,
    client: Any,
    emu: EmulatorAdmin,
    emulator: EmulatorServer,
    connected: tuple[int, int],
    code: int,
    reason: str,
    words: str,
) -> None:
    """The emulator's AADSTS answer marks Reconnect needed with that code's own sentence."""
    uid, _iid = connected
    inject(emulator, aadsts=code, email=ALEX, count=1)
    with pytest.raises(oauth.SignInError) as info:
        call_graph(app, uid)
    assert info.value.problem.reason == reason
    assert info.value.inner_code == f"AADSTS{code}"
    integration = integration_of(app, uid)
    assert integration.status == "needs_reauth"
    assert words in (integration.status_reason or "")
    assert words in client.get("/settings/onedrive/").get_data(as_text=True)
    with pytest.raises(integrations.ReauthRequired):
        call_graph(app, uid)  # refused before asking Microsoft again
    assert token_requests(emu)[-1] == 400


def test_admin_consent_required_shows_the_tenants_admin_link(
    app: Flask,
    client: Any,
    emu: EmulatorAdmin,
    emulator: EmulatorServer,
    connected: tuple[int, int],
) -> None:
    """90094 asks for an administrator, with the admin-consent link built from the config."""
    uid, iid = connected
    with app.app_context(), user_scope(uid):
        row = integrations._load_token_row(iid, lock=False)
        assert row is not None and row.refresh_token_encrypted
        refresh_token = integrations.vault().decrypt(
            row.refresh_token_encrypted, f"oauth_tokens:{iid}:r"
        )
        db.session.rollback()
    inject(emulator, aadsts=90094, refresh_token=refresh_token)  # this grant only
    with pytest.raises(oauth.SignInError):
        call_graph(app, uid)
    link = f"{emulator.url}/organizations/adminconsent?client_id={CLIENT_ID}"
    integration = integration_of(app, uid)
    assert integration.status == "needs_reauth"
    assert link in (integration.status_reason or "")
    assert link in client.get("/settings/onedrive/").get_data(as_text=True)


def test_expired_client_secret_is_the_operators_problem(
    app: Flask,
    emu: EmulatorAdmin,
    emulator: EmulatorServer,
    connected: tuple[int, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """7000222 leaves users connected, logs the fix for the operator, and sets the notice."""
    uid, _iid = connected
    inject(emulator, aadsts=7000222, client_id=CLIENT_ID)  # until cleared, like a real expiry
    with caplog.at_level(logging.ERROR):
        with pytest.raises(oauth.AppCredentialsError) as info:
            call_graph(app, uid)
    assert not isinstance(info.value, AuthError)
    assert integration_of(app, uid).status == "active"
    assert token_requests(emu)[-1:] == [401]
    assert len([s for s in token_requests(emu) if s == 401]) == 1  # not hammered
    notice = integrations.operator_notice()
    assert notice is not None and "do not need to reconnect" in notice
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        "client_secret_expired" in line and "DRIVESYNC_MS_CLIENT_SECRET" in line for line in lines
    )
    assert not any(CLIENT_SECRET in line for line in lines)
    # The operator installs a new secret (here: the fault ends); the next refresh works.
    requests.delete(f"{emulator.url}/_emulator/faults/token-error", timeout=10).raise_for_status()
    assert call_graph(app, uid)["mail"] == ALEX
    assert integrations.operator_notice() is None


def test_503_burst_then_success_never_marks_the_connection(
    app: Flask,
    emu: EmulatorAdmin,
    emulator: EmulatorServer,
    connected: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two 503s with Retry-After are waited out and the refresh then succeeds."""
    uid, _iid = connected
    waits: list[float] = []
    monkeypatch.setattr(
        integrations, "REFRESH_PACER", Pacer(max_attempts=4, max_total_wait=30, sleep=waits.append)
    )
    emu.clear_requests_log()
    inject(emulator, status=503, count=2, retry_after=1, email=ALEX)
    assert call_graph(app, uid)["mail"] == ALEX
    assert token_requests(emu) == [503, 503, 200]
    assert len(waits) == 2 and min(waits) >= 1.0
    assert integration_of(app, uid).status == "active"


def test_a_fault_for_another_account_does_not_hit_this_one(
    app: Flask, emu: EmulatorAdmin, emulator: EmulatorServer, connected: tuple[int, int]
) -> None:
    """A fault aimed at Megan's grants leaves Alex's refresh working."""
    uid, _iid = connected
    inject(emulator, aadsts=50173, email=MEGAN)
    assert call_graph(app, uid)["mail"] == ALEX
    assert integration_of(app, uid).status == "active"


def test_emulator_answers_in_microsofts_shape(emulator: EmulatorServer, emu: EmulatorAdmin) -> None:
    """The injected answer has error, AADSTS description, codes, trace and correlation ids."""
    inject(emulator, aadsts=70043, client_id=CLIENT_ID, count=1)
    r = requests.post(
        f"{emulator.url}{TOKEN_PATH}",
        data={
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "grant_type": "refresh_token",
            "refresh_token": "anything",
        },
        timeout=10,
    )
    body = r.json()
    assert r.status_code == 400 and body["error"] == "invalid_grant"
    assert body["error_description"].startswith("AADSTS70043: ")
    assert body["error_codes"] == [70043]
    assert {"trace_id", "correlation_id", "timestamp"} <= body.keys()


def test_clearing_all_faults_clears_token_errors(
    app: Flask, emu: EmulatorAdmin, emulator: EmulatorServer, connected: tuple[int, int]
) -> None:
    """The admin API's "clear all faults" also ends injected token-endpoint errors."""
    uid, _iid = connected
    inject(emulator, aadsts=700082, email=ALEX)  # until cleared
    emu.clear_faults()
    assert call_graph(app, uid)["mail"] == ALEX
