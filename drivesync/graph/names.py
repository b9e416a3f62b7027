"""OneDrive's naming rules, checked locally before any request is made.

Source: "Restrictions and limitations in OneDrive and SharePoint"
https://support.microsoft.com/office/restrictions-and-limitations-in-onedrive-and-sharepoint-64883a5d-228e-48f5-b3d2-eb39e07630fa
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

# "File uploads: 250 GB" (same page, "File size" section), for OneDrive personal and for work or
# school. Microsoft writes GB; we read it as GiB as its upload docs use binary units (320 KiB).
MAX_FILE_SIZE = 250 * 1024**3

MAX_NAME_LENGTH = 255
# "The entire decoded file path, including the file name, can't contain more than 400 characters"
MAX_PATH_LENGTH = 400

INVALID_CHARS = frozenset('"*:<>?/\\|')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Reserved names, case-insensitive. The device names are also refused with an extension:
# Graph answers 400 invalidRequest for "CON.txt" (https://github.com/abraunegg/onedrive/pull/3661),
# matching Windows' rule (https://learn.microsoft.com/windows/win32/fileio/naming-a-file).
_DEVICE = re.compile(r"^(?:CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(?:\..*)?$", re.IGNORECASE)
_RESERVED_EXACT = frozenset({".lock", "desktop.ini"})


def validate_name(name: str) -> str | None:
    """Return why ``name`` cannot be a OneDrive file or folder name, or None when it can."""
    if not name:
        return "The name is empty."
    if name in (".", ".."):
        return f'"{name}" is not a valid file name.'
    if len(name) > MAX_NAME_LENGTH:
        return f"The name is longer than {MAX_NAME_LENGTH} characters."
    bad = sorted({c for c in name if c in INVALID_CHARS})
    if bad:
        shown = " ".join(bad)
        return f"OneDrive does not allow these characters in names: {shown}"
    if _CONTROL.search(name):
        return "The name contains control characters."
    if name != name.strip(" "):
        return "OneDrive does not allow names that start or end with a space."
    if name.endswith("."):
        return "OneDrive does not allow names that end with a dot."
    lowered = name.lower()
    if lowered in _RESERVED_EXACT or _DEVICE.match(name):
        return f'"{name}" is a reserved name on OneDrive.'
    if "_vti_" in lowered:
        return 'OneDrive does not allow "_vti_" anywhere in a name.'
    if name.startswith("~$"):
        return 'OneDrive does not allow names that start with "~$" (Office lock files).'
    return None


def validate_path(path: str) -> str | None:
    """Return why ``path`` (folders/name, "/"-separated) cannot exist on OneDrive, or None."""
    stripped = path.strip("/")
    if not stripped:
        return "The path is empty."
    if len(stripped) > MAX_PATH_LENGTH:
        return f"The path is longer than {MAX_PATH_LENGTH} characters."
    for segment in stripped.split("/"):
        if segment in ("", ".", ".."):
            return "The path has an empty, '.' or '..' segment."
        reason = validate_name(segment)
        if reason:
            return f"{segment!r}: {reason}" if len(segment) <= 80 else reason
    return None
