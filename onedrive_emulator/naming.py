"""OneDrive naming rules, as the emulator enforces them.

Source: "Restrictions and limitations in OneDrive and SharePoint",
https://support.microsoft.com/office/64883a5d-228e-48f5-b3d2-eb39e07630fa — invalid characters
``" * : < > ? / \\ |``, no leading or trailing spaces, no trailing period, reserved names
(``.lock``, ``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM0``-``COM9``, ``LPT0``-``LPT9``, ``_vti_``,
``desktop.ini``, and names starting with ``~$``), and "the entire decoded file path, including
the file name, can't contain more than 400 characters".
"""

from __future__ import annotations

import re

INVALID_CHARS = set('"*:<>?/\\|')
RESERVED = {".lock", "con", "prn", "aux", "nul", "desktop.ini"} | {
    f"{dev}{n}" for dev in ("com", "lpt") for n in range(10)
}
MAX_PATH = 400
_CONTROL = re.compile(r"[\x00-\x1f]")


def name_problem(name: str) -> str | None:
    """Return why ``name`` is not a valid OneDrive item name, or None if it is."""
    if not name:
        return "The name must not be empty."
    if any(ch in INVALID_CHARS for ch in name) or _CONTROL.search(name):
        return 'The name must not contain any of these characters: " * : < > ? / \\ |'
    if name != name.strip(" "):
        return "The name must not start or end with a space."
    if name.endswith("."):
        return "The name must not end with a period."
    folded = name.casefold()
    if folded in RESERVED:
        return f"'{name}' is a reserved name."
    if "_vti_" in folded:
        return "The name must not contain '_vti_'."
    if name.startswith("~$"):
        return "The name must not start with '~$'."
    return None


def path_problem(path: str) -> str | None:
    """Return why the decoded full path is too long, or None."""
    if len(path) > MAX_PATH:
        return f"The path must not be longer than {MAX_PATH} characters."
    return None
