"""Keep credentials out of third-party DEBUG logs.

requests-oauthlib logs token request and response bodies at DEBUG, and urllib3 logs each request
line, query string included (an upload session URL's query string is its credential). These
filters are installed on import of the Graph modules, whatever the application's logging setup.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

_QUERY = re.compile(r"\?\S*")
# Pre-authenticated download and upload URLs may carry their credential in the path, as one long
# opaque segment. Graph's own paths have short segments (item ids are at most ~40 characters).
_LONG_SEGMENT = re.compile(r"/[A-Za-z0-9._~%!-]{41,}")


class DropDebugFilter(logging.Filter):
    """Drop DEBUG records: requests-oauthlib prints tokens and secrets at that level."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep only records above DEBUG."""
        return record.levelno > logging.DEBUG


def _scrub(text: str) -> str:
    return _LONG_SEGMENT.sub("/[redacted]", _QUERY.sub("?[redacted]", text))


class StripQueryFilter(logging.Filter):
    """Remove query strings and long opaque path segments from urllib3's request lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite string arguments that may carry a credential; keep the record."""
        if isinstance(record.args, tuple):
            record.args = tuple(_scrub(a) if isinstance(a, str) else a for a in record.args)
        return True


_INSTALLED: dict[str, type[logging.Filter]] = {
    "requests_oauthlib.oauth2_session": DropDebugFilter,
    "requests_oauthlib": DropDebugFilter,
    "urllib3.connectionpool": StripQueryFilter,
}


def install() -> None:
    """Attach the filters once (idempotent)."""
    for name, cls in _INSTALLED.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, cls) for f in log.filters):
            log.addFilter(cls())
