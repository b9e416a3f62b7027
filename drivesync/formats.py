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


# Every state a library file can be in: its badge and the one plain sentence the pages show.
SYNC_STATES: dict[str, tuple[str, str]] = {
    "not_synced": ("not synced", "Not in OneDrive yet."),
    "syncing": ("syncing", "Being uploaded to OneDrive."),
    "synced": ("synced", "In OneDrive."),
    "error": ("failed", "The last upload to OneDrive failed."),
    "conflict": ("conflict", "Changed both here and in OneDrive since the last sync."),
    "remote_changed": ("newer in OneDrive", "OneDrive has a newer version."),
    "remote_deleted": ("deleted in OneDrive", "Deleted in OneDrive."),
    "local_only": ("library only", "Kept only in the library."),
}


def state_badge(status: str) -> str:
    """Return the badge text of a file's OneDrive state."""
    return SYNC_STATES.get(status, (status.replace("_", " "), ""))[0]


def state_sentence(status: str) -> str:
    """Return the plain sentence that says what a file's OneDrive state means."""
    return SYNC_STATES.get(status, ("", ""))[1]


def moved_in_onedrive(
    name: str, onedrive_name: str | None, onedrive_path: str | None, folder_path: str | None
) -> str:
    """Return where a synced file is in OneDrive when that is not the library's name in the folder.

    ``onedrive_path`` is the path the last sync or delta check recorded ("/drivesync/a.pdf"),
    ``folder_path`` the sync folder ("drivesync"). Empty when OneDrive has it where expected.
    """
    if onedrive_path and folder_path is not None:
        expected = "/" + "/".join(p for p in (folder_path.strip("/"), name) if p)
        if onedrive_path != expected:
            return onedrive_path
        return ""
    if onedrive_name and onedrive_name != name:
        return onedrive_name
    return ""


def every(seconds: int | float | None) -> str:
    """Return a polling interval as "every 15 minutes" ("every hour", "once a day")."""
    if not seconds:
        return ""
    s = int(seconds)
    if s >= 86400 and s % 86400 == 0:
        return "once a day" if s == 86400 else f"every {s // 86400} days"
    if s >= 3600 and s % 3600 == 0:
        return "every hour" if s == 3600 else f"every {s // 3600} hours"
    if s >= 60 and s % 60 == 0:
        return "every minute" if s == 60 else f"every {s // 60} minutes"
    return "every second" if s == 1 else f"every {s} seconds"
