"""Plain formatting of values for people, shared by templates, views and service messages."""

from __future__ import annotations

from datetime import UTC, datetime


def humansize(n: int | None) -> str:
    """Return a byte count in human units (1.5 MB)."""
    if n is None:
        return "—"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            if unit == "bytes":
                return "1 byte" if n == 1 else f"{int(size)} bytes"
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def reltime(when: datetime | None) -> str:
    """Return a time as '3 minutes ago'."""
    if when is None:
        return "never"
    seconds = int((datetime.now(UTC) - when).total_seconds())
    if seconds < 45:
        return "just now"
    for span, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= span:
            n = round(seconds / span)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


def isotime(when: datetime | None) -> str:
    """Return a time as an exact UTC string for a tooltip."""
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


def until(when: datetime | None) -> str:
    """Return a future time as "in 7 min" (the failed-file lines' next try)."""
    if when is None:
        return ""
    seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds < 60:
        return "in less than a minute"
    if seconds < 3600:
        return f"in {int(seconds // 60)} min"
    hours = seconds / 3600
    return f"in {hours:.0f} h" if hours >= 10 else f"in {hours:.1f} h".replace(".0 h", " h")
