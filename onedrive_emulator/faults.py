"""Fault injection: throttling, 5xx bursts, dropped, lost and reset connections, latency.

Throttling follows https://learn.microsoft.com/graph/throttling : 429 always carries a
``Retry-After`` header (seconds); 503 may carry one. Status faults apply to Graph traffic
(``/v1.0/``) and to the pre-authenticated upload and download URLs, never to the identity
platform or the admin API.

Connection faults are aimed at a *target*: ``fragment`` (a PUT to an upload session URL, the
default) or ``graph`` (any request under ``/v1.0/``, e.g. a simple ``PUT …/content``):

- ``drop``: read about half of the request body, then close the connection without an answer
  (over TLS without ``close_notify``): the client sees the connection die mid-body;
- ``lose``: let the request succeed (the fragment or file is stored), then close the connection
  instead of sending the answer;
- ``reset``: read about half of the body, then abort the connection with an RST
  (``SO_LINGER`` 0): no FIN, no ``close_notify``.

Each armed fault fires once per matching request, ``count`` times, in the order above.

``delta_gone`` answers the next ``count`` delta requests that carry a token with ``410 Gone``
and one of the resync codes from
https://learn.microsoft.com/graph/api/driveitem-delta ("There may be cases when the service
can't provide a list of changes for a given token ..."), plus the legacy ``resyncRequired``
from https://learn.microsoft.com/onedrive/developer/rest-api/concepts/errors .
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONNECTION_FAULTS = ("drop", "lose", "reset")
TARGETS = ("fragment", "graph")
FAIL_STATUSES = (500, 502, 503, 504)
RESYNC_CODES = ("resyncChangesApplyDifferences", "resyncChangesUploadDifferences", "resyncRequired")


@dataclass
class Injected:
    """A fault to answer instead of the real response."""

    status: int
    retry_after: int | None


@dataclass
class Faults:
    """Fault switches; mutate only while holding the state lock."""

    throttle_every: int | None = None
    throttle_count: int = 0
    retry_after: int = 1
    fail_status: int | None = None
    fail_count: int = 0
    fail_retry_after: int | None = 1
    armed: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, target) -> count
    graph_requests: int = 0
    delta_gone_code: str = RESYNC_CODES[0]
    delta_gone_count: int = 0

    def arm_delta_gone(self, code: str, count: int) -> None:
        """Make the next ``count`` delta requests carrying a token answer 410 with ``code``."""
        if code not in RESYNC_CODES:
            raise ValueError(f"code must be one of {', '.join(RESYNC_CODES)}")
        self.delta_gone_code, self.delta_gone_count = code, max(0, count)

    def take_delta_gone(self) -> str | None:
        """Consume one armed delta 410; return its code, or None when none is armed."""
        if self.delta_gone_count <= 0:
            return None
        self.delta_gone_count -= 1
        return self.delta_gone_code

    def next_fault(self) -> Injected | None:
        """Count one Graph request and return the status fault to answer it with, if any."""
        self.graph_requests += 1
        if self.throttle_count > 0:
            self.throttle_count -= 1
            return Injected(429, self.retry_after)
        if self.throttle_every and self.graph_requests % self.throttle_every == 0:
            return Injected(429, self.retry_after)
        if self.fail_status and self.fail_count > 0:
            self.fail_count -= 1
            # Only 503 may carry Retry-After (graph/throttling); 500/502/504 never do.
            retry_after = self.fail_retry_after if self.fail_status == 503 else None
            return Injected(self.fail_status, retry_after)
        return None

    def arm(self, kind: str, target: str, count: int) -> None:
        """Make the next ``count`` requests of ``target`` suffer connection fault ``kind``."""
        if kind not in CONNECTION_FAULTS or target not in TARGETS:
            raise ValueError(f"unknown connection fault {kind!r} on {target!r}")
        self.armed[(kind, target)] = max(0, count)

    def take(self, kind: str, target: str | None) -> bool:
        """Consume one armed ``kind`` fault for a request of ``target``; return whether it fires."""
        if target is None:
            return False
        left = self.armed.get((kind, target), 0)
        if left <= 0:
            return False
        self.armed[(kind, target)] = left - 1
        return True

    def clear(self) -> None:
        """Switch every fault off (the request counter keeps counting)."""
        count = self.graph_requests
        self.__init__()  # type: ignore[misc]
        self.graph_requests = count
