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


class DropDebugFilter(logging.Filter):
    """Drop DEBUG records: requests-oauthlib prints tokens and secrets at that level."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep only records above DEBUG."""
        return record.levelno > logging.DEBUG


class StripQueryFilter(logging.Filter):
    """Remove query strings from urllib3's request lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite string arguments that carry a query string; keep the record."""
        if isinstance(record.args, tuple):
            record.args = tuple(
                _QUERY.sub("?[redacted]", a) if isinstance(a, str) and "?" in a else a
                for a in record.args
            )
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
