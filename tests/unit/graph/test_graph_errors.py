"""GraphError parsing and redaction."""

from __future__ import annotations

import json

import pytest
import requests

from drivesync.graph.errors import (
    AuthError,
    GraphError,
    InsufficientStorageError,
    NameNotAllowedError,
    from_response,
    redact,
)


def response(
    status: int, body: object | str, headers: dict[str, str] | None = None
) -> requests.Response:
    """Build a requests.Response with this status, body and headers."""
    resp = requests.Response()
    resp.status_code = status
    resp.reason = "Reason"
    resp._content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    resp.headers.update(headers or {})
    return resp


def test_graph_error_body_is_parsed() -> None:
    """code, message, inner code and request-id come from the Graph error body."""
    err = from_response(
        response(
            404,
            {
                "error": {
                    "code": "itemNotFound",
                    "message": "The resource could not be found.",
                    "innerError": {"code": "resourceNotFound", "request-id": "rid-1", "date": "x"},
                }
            },
        )
    )
    assert (err.status, err.code, err.inner_code, err.request_id) == (
        404,
        "itemNotFound",
        "resourceNotFound",
        "rid-1",
    )
    assert err.message == "The resource could not be found." and not err.retryable
    assert "itemNotFound" in str(err) and "rid-1" in str(err)


def test_non_json_body_is_tolerated() -> None:
    """An HTML 502 from a proxy still becomes a retryable GraphError."""
    err = from_response(response(502, "<html>Bad Gateway</html>", {"request-id": "r2"}))
    assert err.status == 502 and err.code == "http502" and err.retryable
    assert err.request_id == "r2"


def test_retry_after_header_is_read() -> None:
    """Retry-After lands on the error for the pacer."""
    err = from_response(
        response(
            429,
            {"error": {"code": "activityLimitReached", "message": "throttled"}},
            {"Retry-After": "9"},
        )
    )
    assert err.retry_after == 9.0 and err.retryable
    assert "limiting" in err.human_message()


@pytest.mark.parametrize("code", ["quotaLimitReached", "insufficientStorage"])
def test_507_becomes_insufficient_storage(code: str) -> None:
    """507 maps to InsufficientStorageError, final, with a plain sentence."""
    err = from_response(response(507, {"error": {"code": code, "message": "full"}}))
    assert isinstance(err, InsufficientStorageError) and not err.retryable
    assert err.human_message().startswith("Your OneDrive is full")


def test_identity_platform_body_is_parsed() -> None:
    """The token endpoint's {"error": "...", "error_description"} shape parses too."""
    err = from_response(
        response(400, {"error": "invalid_request", "error_description": "AADSTS900144: missing"})
    )
    assert err.code == "invalid_request" and "AADSTS900144" in err.message


def test_messages_are_redacted() -> None:
    """URL query strings, bearer tokens and JWTs never survive into str(error)."""
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"
    text = (
        f"see https://up.1drv.com/up/abc?tempauth=SECRET123 with Bearer {jwt} "
        "and access_token=abcdefgh12345"
    )
    err = from_response(response(400, {"error": {"code": "invalidRequest", "message": text}}))
    for secret in ("SECRET123", jwt, "abcdefgh12345"):
        assert secret not in str(err) and secret not in repr(err)
    assert "https://up.1drv.com/up/abc" in str(err)


def test_redact_removes_given_secrets() -> None:
    """Explicitly passed secrets are removed wherever they appear."""
    assert (
        redact("token 0.AXYZsecretvalue leaked", "0.AXYZsecretvalue") == "token [redacted] leaked"
    )


def test_human_messages_never_show_raw_server_text() -> None:
    """human_message is ours, not the server's text."""
    err = GraphError("internal stack trace at https://x/y?sig=1", status=500)
    assert "stack" not in err.human_message() and "sig" not in err.human_message()


def test_subclasses_are_graph_errors() -> None:
    """Callers can catch GraphError and still branch on the subclass."""
    assert issubclass(AuthError, GraphError) and issubclass(NameNotAllowedError, GraphError)
    assert "Reconnect" in AuthError("x", code="invalid_grant").human_message()
    assert NameNotAllowedError("bad name").human_message() == "bad name"
