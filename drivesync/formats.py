"""Plain formatting of values for people, shared by templates, views and service messages."""

from __future__ import annotations


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
