"""Fault injection: throttling, 5xx bursts, dropped connections and lost responses.

Throttling follows https://learn.microsoft.com/graph/throttling : 429 with a ``Retry-After``
header (seconds); 503 may carry one too. Faults apply to Graph traffic (``/v1.0/``) and to the
pre-authenticated upload and download URLs, never to the identity platform or the admin API.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    fail_retry_after: int = 1
    drop_count: int = 0
    lose_count: int = 0
    graph_requests: int = 0

    def next_fault(self) -> Injected | None:
        """Count one Graph request and return the fault to inject for it, if any."""
        self.graph_requests += 1
        if self.throttle_count > 0:
            self.throttle_count -= 1
            return Injected(429, self.retry_after)
        if self.throttle_every and self.graph_requests % self.throttle_every == 0:
            return Injected(429, self.retry_after)
        if self.fail_status and self.fail_count > 0:
            self.fail_count -= 1
            retry_after = self.fail_retry_after if self.fail_status == 503 else None
            return Injected(self.fail_status, retry_after)
        return None

    def take_drop(self) -> bool:
        """Consume one 'drop the connection mid-fragment' fault."""
        if self.drop_count > 0:
            self.drop_count -= 1
            return True
        return False

    def take_lose(self) -> bool:
        """Consume one 'store the fragment but lose the response' fault."""
        if self.lose_count > 0:
            self.lose_count -= 1
            return True
        return False

    def clear(self) -> None:
        """Switch every fault off (the request counter keeps counting)."""
        count = self.graph_requests
        self.__init__()  # type: ignore[misc]
        self.graph_requests = count
