"""Errors raised by the Graph package, parsed from Microsoft's error bodies.

Graph answers ``{"error": {"code", "message", "innerError": {"code", "request-id", "date"}}}``
(https://learn.microsoft.com/graph/errors); the identity platform's token endpoint answers
``{"error": "invalid_grant", "error_description": "AADSTS70008: ...", "error_codes": [...]}``
(https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow#error-response-1).
Callers branch on ``.code`` / ``.status`` / the class, never on message text.

Nothing here may carry a secret: messages pass through :func:`redact`, which removes bearer
tokens, JWT-shaped strings and the query strings of URLs (an upload session's ``uploadUrl`` and a
download's pre-authenticated URL carry their credential in the query string).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import requests

from drivesync.graph.retry import RETRY_STATUSES, parse_retry_after, should_retry

logger = logging.getLogger(__name__)

_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)[?#][^\s\"'<>]*", re.IGNORECASE)
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_SECRET_FIELD = re.compile(
    r"((?:access_token|refresh_token|id_token|code|code_verifier|client_secret|tempauth)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+",
    re.IGNORECASE,
)
_MAX_MESSAGE = 500


def redact(text: str | None, *secrets: str | None) -> str:
    """Return ``text`` without tokens, Authorization values or URL query strings."""
    if not text:
        return ""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[redacted]")
    text = _URL_QUERY.sub(r"\1?[redacted]", text)
    text = _BEARER.sub(r"\1[redacted]", text)
    text = _JWT.sub("[redacted]", text)
    text = _SECRET_FIELD.sub(r"\1[redacted]", text)
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    return text


class GraphError(Exception):
    """An error answered by Microsoft Graph or the identity platform, or met on the way there."""

    default_human = "OneDrive returned an unexpected error."

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        code: str | None = None,
        inner_code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
        location: str | None = None,
    ) -> None:
        self.status = status
        # A 410 from delta carries where to enumerate again (driveItem-delta, "Response").
        self.location = location
        self.code = code or (f"http{status}" if status else "error")
        self.message = redact(message)
        self.inner_code = inner_code
        self.request_id = request_id
        self.retry_after = retry_after
        self.retryable = (status in RETRY_STATUSES) if retryable is None else retryable
        super().__init__(self.__str__())

    def __str__(self) -> str:
        head = f"{self.status} {self.code}" if self.status else self.code
        text = f"{head}: {self.message}" if self.message else head
        if self.inner_code:
            text += f" (inner: {self.inner_code})"
        if self.request_id:
            text += f" [request-id {self.request_id}]"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__str__()!r})"

    def human_message(self) -> str:
        """Return one sentence that is safe to show a user (no tokens, no signed URLs)."""
        return _HUMAN_BY_CODE.get(self.code) or _human_by_status(self.status) or self.default_human


class AuthError(GraphError):
    """The grant is gone (``invalid_grant``, ``interaction_required``): the user must reconnect."""

    default_human = (
        "Your Microsoft account connection has expired or was revoked. "
        "Reconnect OneDrive to continue syncing."
    )

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("retryable", False)
        super().__init__(message, **kwargs)

    def human_message(self) -> str:
        """Return the reconnect sentence, whatever the underlying code."""
        return self.default_human


class InsufficientStorageError(GraphError):
    """HTTP 507 / ``quotaLimitReached``: the drive is full. Final, never retried."""

    default_human = "Your OneDrive is full. Free up space or add storage, then sync again."

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("retryable", False)
        kwargs.setdefault("status", 507)
        super().__init__(message, **kwargs)

    def human_message(self) -> str:
        """Return the storage-full sentence."""
        return self.default_human


class NameNotAllowedError(GraphError):
    """A local OneDrive naming rule failed; no request was made."""

    def __init__(self, reason: str, name: str | None = None) -> None:
        self.reason = reason
        self.name = name
        super().__init__(reason, code="nameNotAllowed", retryable=False)

    def human_message(self) -> str:
        """Return the rule that the name breaks."""
        return self.reason


class FileTooLargeError(GraphError):
    """The file is larger than OneDrive accepts; no request was made."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"file is {size} bytes, the limit is {limit}", code="fileTooLarge", retryable=False
        )

    def human_message(self) -> str:
        """Return the size limit in words."""
        return f"This file is larger than OneDrive's limit of {self.limit // 1024**3} GB."


class IntegrityError(GraphError):
    """The quickXorHash OneDrive reports differs from the bytes we sent.

    Not to be confused with ``sqlalchemy.exc.IntegrityError``; import it qualified.
    """

    def __init__(self, local_hash: str, remote_hash: str | None, item_id: str | None = None):
        self.local_hash = local_hash
        self.remote_hash = remote_hash
        self.item_id = item_id
        super().__init__(
            f"quickXorHash mismatch: local {local_hash}, remote {remote_hash}",
            code="hashMismatch",
            retryable=False,
        )

    def human_message(self) -> str:
        """Return the mismatch sentence."""
        return "The copy on OneDrive does not match this file (checksum mismatch)."


# No sentence promises a retry nobody schedules: until automatic retries exist (issue 10), a
# transient failure asks the user to press Retry.
_HUMAN_BY_CODE: dict[str, str] = {
    "quotaLimitReached": InsufficientStorageError.default_human,
    "insufficientStorage": InsufficientStorageError.default_human,
    "activityLimitReached": "OneDrive is limiting requests right now. Try again in a few minutes.",
    "nameAlreadyExists": "A file with this name already exists in that OneDrive folder.",
    "itemNotFound": "The item was not found on OneDrive (it may have been moved or deleted).",
    "accessDenied": "OneDrive denied access to this item.",
    "resourceModified": "The file changed on OneDrive since it was last synced.",
    "resourceLocked": "The file is locked on OneDrive (open for editing or checked out).",
    "malwareDetected": "OneDrive reported that this file contains malware.",
    "pathIsTooLong": "The OneDrive path is too long (400 characters at most).",
    "maxFileSizeExceeded": "This file is larger than OneDrive accepts.",
    "invalidRange": "The upload was interrupted.",
    "networkError": "Could not reach OneDrive (network problem).",
    "uploadSessionFailed": "The upload to OneDrive kept failing.",
}


def _human_by_status(status: int | None) -> str | None:
    # No promise about what happens next: the settings page shows the file's next try.
    if status in (429, 503, 509):
        return "OneDrive is busy right now."
    if status is not None and status >= 500:
        return "OneDrive had a temporary problem."
    if status == 401:
        return "OneDrive did not accept the sign-in; reconnect OneDrive if this persists."
    if status == 403:
        return "OneDrive denied access to this item."
    if status == 404:
        return "The item was not found on OneDrive."
    if status == 409:
        return "A conflicting item already exists on OneDrive."
    if status == 412:
        return "The file changed on OneDrive since it was last synced."
    if status == 413:
        return "This file is too large for this kind of upload."
    if status == 423:
        return _HUMAN_BY_CODE["resourceLocked"]
    return None


def _class_for(status: int | None, code: str | None) -> type[GraphError]:
    if status == 507 or code in ("quotaLimitReached", "insufficientStorage"):
        return InsufficientStorageError
    return GraphError


def from_response(resp: requests.Response, *, secrets: tuple[str | None, ...] = ()) -> GraphError:
    """Build the right ``GraphError`` from a non-2xx Graph response (JSON or not)."""
    status = resp.status_code
    request_id = resp.headers.get("request-id") or resp.headers.get("client-request-id")
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    code: str | None = None
    message = ""
    inner_code: str | None = None
    try:
        body: Any = resp.json()
    except (ValueError, json.JSONDecodeError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = _str(error.get("code"))
            message = _str(error.get("message")) or ""
            inner = error.get("innerError") or error.get("innererror")
            if isinstance(inner, dict):
                inner_code = _str(inner.get("code"))
                request_id = _str(inner.get("request-id")) or request_id
        elif isinstance(error, str):  # identity-platform shape
            code = error
            message = _str(body.get("error_description")) or ""
    if not message:
        message = resp.reason or ""
    cls = _class_for(status, code)
    return cls(
        redact(message, *secrets),
        status=status,
        code=code,
        inner_code=inner_code,
        request_id=request_id,
        retry_after=retry_after,
        location=resp.headers.get("Location") if status == 410 else None,
    )


def network_error(exc: BaseException) -> GraphError:
    """Wrap a ``requests`` transport failure without its URL (it may carry a credential)."""
    kind = type(exc).__name__
    retryable, _wait = should_retry(exc)  # the pacer's one decision, so both always agree
    message = f"{kind} while talking to Microsoft"
    return GraphError(message, code="networkError", retryable=retryable)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
