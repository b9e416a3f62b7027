"""A small client for the emulator's admin API (``/_emulator/``), for tests and scripts."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests


class EmulatorAdmin:
    """Drive the emulator's admin API over HTTP."""

    def __init__(self, base_url: str, timeout: float = 10.0, verify: str | None = None) -> None:
        """Point the client at ``base_url``; ``verify`` names a CA file for an HTTPS emulator.

        Without ``verify``, ``requests`` trusts ``REQUESTS_CA_BUNDLE`` (or certifi's roots).
        """
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = requests.Session()
        # Per request, not Session.verify: requests lets REQUESTS_CA_BUNDLE override the latter.
        self._verify: str | bool = verify or True

    def _call(self, method: str, path: str, json: Any = None, data: bytes | None = None) -> Any:
        resp = self._http.request(
            method,
            f"{self.base_url}/_emulator{path}",
            json=json,
            data=data,
            timeout=self.timeout,
            verify=self._verify,
        )
        resp.raise_for_status()
        return resp.json()

    def close(self) -> None:
        """Close the HTTP session."""
        self._http.close()

    def register_client(
        self,
        client_id: str,
        client_secret: str | None,
        redirect_uris: list[str],
        app_name: str | None = None,
    ) -> dict[str, Any]:
        """Register an app (``client_secret=None`` registers a public client)."""
        return self._call(
            "POST",
            "/clients",
            {
                "client_id": client_id,
                "client_secret": client_secret,
                "redirect_uris": redirect_uris,
                "app_name": app_name,
            },
        )

    def add_account(
        self,
        email: str,
        display_name: str,
        drive_type: str = "personal",
        quota_total: int = 5 * 1024**3,
    ) -> dict[str, Any]:
        """Create an account with an empty drive."""
        return self._call(
            "POST",
            "/accounts",
            {
                "email": email,
                "display_name": display_name,
                "drive_type": drive_type,
                "quota_total": quota_total,
            },
        )

    def mint_token(
        self, email: str, client_id: str, scopes: str = "offline_access User.Read Files.ReadWrite"
    ) -> dict[str, Any]:
        """Return an identity-platform token response for the account, without a browser."""
        return self._call(
            "POST", "/token", {"email": email, "client_id": client_id, "scopes": scopes}
        )

    def throttle(
        self, every: int | None = None, count: int | None = None, retry_after: int = 1
    ) -> None:
        """Answer 429 + Retry-After every Nth Graph request and/or for the next ``count``."""
        self._call(
            "POST", "/faults/throttle", {"every": every, "count": count, "retry_after": retry_after}
        )

    def fail(self, status: int, count: int, retry_after: int | None = 1) -> None:
        """Answer the next ``count`` Graph requests with ``status`` (500/502/503/504).

        A 503 carries ``Retry-After: retry_after`` unless it is None; other statuses never do.
        """
        self._call(
            "POST", "/faults/fail", {"status": status, "count": count, "retry_after": retry_after}
        )

    def expire_access_tokens(self, after_seconds: float) -> None:
        """Make access tokens (issued and future) expire after ``after_seconds``."""
        self._call("POST", "/faults/expire-access-tokens", {"after_seconds": after_seconds})

    def revoke_consent(self, email: str) -> None:
        """Withdraw consent: refresh answers invalid_grant, bearer tokens get 401."""
        self._call("POST", f"/accounts/{quote(email)}/revoke-consent")

    def expire_upload_sessions(self) -> None:
        """Expire all open upload sessions (they answer 404)."""
        self._call("POST", "/faults/expire-upload-sessions")

    def drop_connection(self, count: int = 1, target: str = "fragment") -> None:
        """Cut the connection mid-body for the next ``count`` requests (fragment|graph)."""
        self._call("POST", "/faults/drop-connection", {"count": count, "target": target})

    def lose_response(self, count: int = 1, target: str = "fragment") -> None:
        """Do the next ``count`` requests but close the connection instead of answering."""
        self._call("POST", "/faults/lose-response", {"count": count, "target": target})

    def reset_connection(self, count: int = 1, target: str = "fragment") -> None:
        """Abort the connection with an RST mid-body for the next ``count`` requests."""
        self._call("POST", "/faults/reset-connection", {"count": count, "target": target})

    def set_latency(self, ms: float) -> None:
        """Add ``ms`` milliseconds to every non-admin request (until the next reset)."""
        self._call("PUT", "/latency", {"ms": ms})

    def latency(self) -> float:
        """Return the added latency in milliseconds."""
        return float(self._call("GET", "/latency")["ms"])

    def quota_exceeded(self, email: str, on: bool = True) -> None:
        """Make uploads for ``email`` answer 507 (or stop doing so)."""
        self._call("POST", f"/accounts/{quote(email)}/quota-exceeded", {"on": on})

    def modify_item(self, email: str, path: str, content: bytes) -> dict[str, Any]:
        """Change (or create) a file on the server side; returns its listing entry."""
        return self._call(
            "PUT", f"/accounts/{quote(email)}/items/{quote(path.lstrip('/'))}", data=content
        )

    def rename_item(self, email: str, path: str, new_name: str) -> dict[str, Any]:
        """Rename an item from another device (new eTag, same cTag); returns its listing entry."""
        return self._call(
            "POST", f"/accounts/{quote(email)}/rename", {"path": path, "new_name": new_name}
        )

    def move_item(self, email: str, path: str, new_parent_path: str) -> dict[str, Any]:
        """Move an item from another device into ``new_parent_path`` ("/" = root; must exist)."""
        return self._call(
            "POST",
            f"/accounts/{quote(email)}/move",
            {"path": path, "new_parent_path": new_parent_path},
        )

    def delete_item(self, email: str, path: str) -> None:
        """Delete an item (and its descendants) from another device."""
        self._call("DELETE", f"/accounts/{quote(email)}/items/{quote(path.lstrip('/'))}")

    def delta_gone(self, code: str = "resyncChangesApplyDifferences", count: int = 1) -> None:
        """Answer the next ``count`` delta requests carrying a token with 410 Gone and ``code``.

        ``code``: resyncChangesApplyDifferences, resyncChangesUploadDifferences or resyncRequired.
        """
        self._call("POST", "/faults/delta-gone", {"code": code, "count": count})

    def list_items(self, email: str) -> list[dict[str, Any]]:
        """List the account's items: path, id, size, quickXorHash, eTag, cTag, folder."""
        return self._call("GET", f"/accounts/{quote(email)}/items")

    def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every change-notification subscription (expired ones too), clientState included."""
        return self._call("GET", "/subscriptions")

    def subscription_lifecycle(self, subscription_id: str, event: str) -> None:
        """Send ``reauthorizationRequired``, ``subscriptionRemoved`` or ``missed`` to the
        subscription's lifecycle URL (``subscriptionRemoved`` also removes it)."""
        self._call("POST", f"/subscriptions/{quote(subscription_id)}/lifecycle", {"event": event})

    def expire_subscription(self, subscription_id: str) -> None:
        """Expire the subscription now: Graph answers 404 for it from then on."""
        self._call("POST", f"/subscriptions/{quote(subscription_id)}/expire")

    def delete_subscription(self, subscription_id: str) -> None:
        """Remove the subscription on the server's side, without telling anyone."""
        self._call("DELETE", f"/subscriptions/{quote(subscription_id)}")

    def notifications_log(self) -> list[dict[str, Any]]:
        """Deliveries so far: url, attempt, status (None = no answer), value."""
        return self._call("GET", "/notifications")

    def clear_notifications_log(self) -> None:
        """Clear the delivery log."""
        self._call("DELETE", "/notifications")

    def set_notification_retry_base(self, seconds: float) -> None:
        """Set the first retry delay of a failed delivery (doubling after each failure)."""
        self._call("PUT", "/notifications/retry-base", {"seconds": seconds})

    def clear_faults(self) -> None:
        """Switch every fault off."""
        self._call("DELETE", "/faults")

    def reset(self) -> None:
        """Wipe drives, tokens, sessions, faults and the log; keep registered clients."""
        self._call("POST", "/reset")

    def requests_log(self) -> list[dict[str, Any]]:
        """Return the request log (see onedrive_emulator.admin for the fields)."""
        return self._call("GET", "/requests")

    def clear_requests_log(self) -> None:
        """Clear the request log."""
        self._call("DELETE", "/requests")
