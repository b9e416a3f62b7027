"""Per-user storage quota: refused before any byte is stored, streamed bodies cut, usage shown."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from drivesync.models import File
from drivesync.services import quota
from drivesync.services.storage import LocalStorage
from tests.conftest import csrf_token, db_rows, upload_payload

MB = 1024 * 1024


@pytest.fixture
def app_overrides():
    """A 1 MB quota."""
    return {"USER_QUOTA_MB": 1}


def _stored(app) -> list[Path]:
    root = Path(app.config["STORAGE_DIR"])
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_over_quota_is_refused_and_stores_nothing(app, make_user, make_file, signed_in):
    """An upload whose Content-Length exceeds what is left is refused with a clear message."""
    uid = make_user()
    make_file(uid, "first.bin", b"x" * (MB - 300 * 1024))
    before = _stored(app)
    client = signed_in(uid)
    token = csrf_token(client)
    r = client.post(
        "/library/upload", data=upload_payload([("big.bin", b"y" * (400 * 1024))], token)
    )
    assert r.status_code == 413
    html = r.get_data(as_text=True)
    assert "only 300.0 KB of your 1.0 MB storage is left" in html and "Nothing was stored" in html
    assert _stored(app) == before
    assert [f.original_name for f in db_rows(app, File, uid)] == ["first.bin"]


def test_streamed_body_growing_past_quota_is_cut_and_cleaned_up(app, make_user, signed_in):
    """A body without Content-Length is stopped once past the quota and leaves no partial file."""
    uid = make_user()
    client = signed_in(uid)
    token = csrf_token(client)
    boundary = "XyZ"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"z" * (2 * MB)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = client.post(
        "/library/upload",
        input_stream=io.BytesIO(body),
        content_type=f"multipart/form-data; boundary={boundary}",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 413
    assert _stored(app) == []
    assert db_rows(app, File, uid) == []


def test_replace_counts_the_old_version_as_free(app, make_user, make_file, signed_in):
    """Replacing a file near the quota succeeds when the new version fits in place of the old."""
    uid = make_user()
    fid = make_file(uid, "big.bin", b"x" * (700 * 1024))
    client = signed_in(uid)
    token = csrf_token(client)
    r = client.post(
        f"/library/{fid}/replace",
        data={"csrf_token": token, "file": (io.BytesIO(b"y" * (400 * 1024)), "big.bin")},
    )
    assert r.status_code == 303
    (f,) = db_rows(app, File, uid)
    assert f.size == 400 * 1024


def test_library_shows_usage(app, make_user, make_file, signed_in):
    """The library says how much of the quota is used."""
    uid = make_user()
    make_file(uid, "a.bin", b"x" * (MB // 4))
    html = signed_in(uid).get("/library/").get_data(as_text=True)
    assert "256.0 KB of 1.0 MB used." in html


def test_import_meter_stops_a_body_larger_than_the_upload_limit(app, make_user):
    """An import's meter refuses bytes past the upload limit even when OneDrive said less."""
    uid = make_user()
    with app.test_request_context():
        app.config["MAX_UPLOAD_MB"] = 1
        app.config["USER_QUOTA_MB"] = 0
        meter = quota.check_import(uid, 10)
        store = LocalStorage(app.config["STORAGE_DIR"])
        incoming = store.new_incoming(meter.take)
        incoming.write(b"x" * MB)
        with pytest.raises(quota.ServiceError) as err:
            incoming.write(b"x")
        store.discard(incoming)
        assert err.value.status == 413
        with pytest.raises(quota.ServiceError, match="larger than the 1.0 MB upload limit"):
            quota.check_import(uid, MB + 1)


def test_quota_defaults_and_validation():
    """Unlimited in development, 5 GB in production; a negative quota is refused."""
    from drivesync.config import ConfigError, load_config, validate_config

    assert load_config({})["USER_QUOTA_MB"] == 0
    assert load_config({"DRIVESYNC_ENV": "production"})["USER_QUOTA_MB"] == 5120
    cfg = load_config({"DRIVESYNC_USER_QUOTA_MB": "-1"})
    with pytest.raises(ConfigError, match="USER_QUOTA_MB"):
        validate_config(cfg)
