"""The audit log: written from domain events, shown on Activity, exported and pruned."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from flask import Flask, g

from drivesync import events
from drivesync.extensions import db
from drivesync.models import AuditEvent, utcnow
from drivesync.scope import user_scope
from drivesync.services import audit
from tests.conftest import PG_OWNER_URL
from tests.data.conftest import audit_rows


def _send(app: Flask, signal, user_id: int | None, path: str = "/", **kw) -> None:
    """Send a signal inside a request, as a view would, and commit as the sender does."""
    with app.test_request_context(path, **kw), user_scope(user_id):
        signal.send(None, user_id=user_id, **{k: v for k, v in kw.items() if k == "email"})
        db.session.commit()


@pytest.fixture
def app_overrides():
    """Trust one proxy hop; on PostgreSQL connect as the owner role, as the operator CLI does
    (the app role's limits are tested in test_audit_postgres.py)."""
    return {"PROXY_COUNT": 1, **({"SQLALCHEMY_DATABASE_URI": PG_OWNER_URL} if PG_OWNER_URL else {})}


def test_sign_in_and_download_entries_carry_actor_address_and_request_id(
    app, make_user, make_file, signed_in
):
    """A download through the app records user, file id, proxied address and request id."""
    uid = make_user()
    fid = make_file(uid, "scan.pdf", b"%PDF")
    client = signed_in(uid)

    @app.before_request
    def _request_id() -> None:
        g.request_id = "req-123"

    with client.get(f"/library/{fid}/download", headers={"X-Forwarded-For": "203.0.113.7"}) as r:
        assert r.status_code == 200
    (entry,) = [e for e in audit_rows(app, uid) if e["action"] == "file.downloaded"]
    assert entry["actor"] == "user"
    assert entry["object_type"] == "file" and entry["object_id"] == str(fid)
    assert entry["source_ip"] == "203.0.113.7"
    assert entry["request_id"] == "req-123"
    assert "scan.pdf" not in json.dumps(entry, default=str)  # ids, never names


def test_failed_sign_in_for_unknown_address_is_stored_as_a_keyed_hash(app, make_user):
    """An unknown address leaves no address in the log, only a stable keyed hash of it."""
    uid = make_user("known@example.com")
    with app.test_request_context("/login", method="POST"):
        events.sign_in_failed.send(None, email="nobody@example.com")
        events.sign_in_failed.send(None, email="nobody@example.com")
        events.sign_in_failed.send(None, email="known@example.com")
        db.session.commit()
    with app.app_context():
        rows = list(db.session.execute(db.select(AuditEvent).order_by(AuditEvent.id)).scalars())
        unknown = [r for r in rows if r.user_id is None]
        assert len(unknown) == 2
        assert (
            unknown[0].object_id
            == unknown[1].object_id
            == audit.keyed_hash("address:nobody@example.com")
        )
        assert all("nobody" not in (r.object_id or "") for r in rows)
        (known,) = [r for r in rows if r.user_id == uid and r.action == "sign_in.failed"]
        assert known.action == "sign_in.failed"
        failed = [r for r in rows if r.action == "sign_in.failed"]
        assert {r.actor for r in failed} == {None}  # whoever typed it is not known


def test_activity_lists_own_entries_in_sentences_newest_first(app, make_user, signed_in):
    """Activity shows the user's entries as sentences, newest first, and none of another user's."""
    a, b = make_user(), make_user()
    client = signed_in(a)  # its own sign-in is the oldest entry
    for signal in (events.signed_in, events.connected, events.signed_out):
        _send(app, signal, a)
    _send(app, events.password_changed, b)
    html = client.get("/account/activity").get_data(as_text=True)
    assert (
        html.index("You signed out.")
        < html.index("You connected OneDrive.")
        < html.index("You signed in.")
    )
    assert "You changed your password." not in html


def test_activity_is_paginated(app, make_user, signed_in):
    """More entries than a page holds are split over pages."""
    uid = make_user()
    client = signed_in(uid)  # one real sign-in, then 55 more entries: 56 sign-ins in all
    with app.test_request_context("/"), user_scope(uid):
        for _ in range(55):
            events.signed_in.send(None, user_id=uid)
        db.session.commit()
    first = client.get("/account/activity").get_data(as_text=True)
    second = client.get("/account/activity?page=2").get_data(as_text=True)
    assert "Page 1 of 2" in first and first.count("You signed in.") == 50
    assert second.count("You signed in.") == 6


def test_operator_commands_are_recorded_and_exported_as_json_lines(app, make_user):
    """`flask users create` is recorded as an operator action and `flask audit export` prints it."""
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["users", "create", "op@example.com"], input="a long password\na long password\n"
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["audit", "export", "--since", "2000-01-01"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(e["action"], e["actor"]) for e in lines] == [("account.created", "operator")]
    result = runner.invoke(args=["audit", "export", "--until", "2000-01-01"])
    assert result.output == ""


def test_key_rotation_is_recorded(app):
    """`flask tokens rotate-key` leaves an operator entry."""
    app.config["TOKEN_KEYS"] = ""
    result = app.test_cli_runner().invoke(args=["tokens", "rotate-key"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        actions = list(db.session.execute(db.select(AuditEvent.action, AuditEvent.actor)).all())
    assert ("tokens.key_rotated", "operator") in actions


def test_prune_deletes_only_entries_past_retention(app, make_user):
    """`flask audit prune --days N` deletes older entries and keeps recent ones."""
    uid = make_user()
    with app.app_context():
        db.session.add_all(
            [
                AuditEvent(
                    user_id=uid,
                    actor="user",
                    action="sign_in.succeeded",
                    created_at=utcnow() - timedelta(days=400),
                ),
                AuditEvent(
                    user_id=uid,
                    actor="user",
                    action="sign_out",
                    created_at=utcnow() - timedelta(days=2),
                ),
            ]
        )
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["audit", "prune", "--days", "365"])
    assert result.exit_code == 0, result.output
    assert "deleted 1 audit entries" in result.output
    assert [e["action"] for e in audit_rows(app, uid)] == ["account.created", "sign_out"]


def test_reconnect_needed_is_recorded_as_drivesync_with_its_reason(app, make_user, signed_in):
    """OneDrive asking for a reconnect is drivesync's entry, with the reason, on Activity."""
    uid = make_user()
    with app.test_request_context("/settings/onedrive/sync", method="POST"), user_scope(uid):
        events.reconnect_needed.send(None, user_id=uid, reason="consent revoked")
        db.session.commit()
    (entry,) = [e for e in audit_rows(app, uid) if e["action"] == "onedrive.reconnect_needed"]
    assert (entry["actor"], entry["detail"]) == ("system", "consent revoked")
    html = signed_in(uid).get("/account/activity").get_data(as_text=True)
    assert "OneDrive asked to be reconnected" in html and "By drivesync." in html
