"""OneDrive naming rules."""

from __future__ import annotations

import pytest

from drivesync.graph.names import MAX_FILE_SIZE, validate_name, validate_path


@pytest.mark.parametrize(
    "name",
    [
        "report.pdf",
        "Résumé 2024 (final).docx",
        ".bashrc",  # a leading dot is fine
        "CONSOLE.txt",  # only the exact device name is reserved, with or without extension
        "COM10.txt",
        "file#1 & 2%.txt",  # '#' and '%' are allowed on OneDrive and SharePoint Online
        "a" * 255,
        "~notlock.txt",
        "vti.txt",
    ],
)
def test_valid_names(name: str) -> None:
    """Ordinary names pass."""
    assert validate_name(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a" * 256,
        'quote".txt',
        "star*.txt",
        "colon:.txt",
        "lt<.txt",
        "gt>.txt",
        "what?.txt",
        "slash/.txt",
        "back\\slash.txt",
        "pipe|.txt",
        "../../etc/passwd",
        " leading.txt",
        "trailing.txt ",
        "trailing.",
        "CON",
        "con",
        "Con.txt",  # Graph refuses device names with an extension too (abraunegg/onedrive#3661)
        "PRN",
        "AUX.tar.gz",
        "NUL",
        "COM0",
        "com9.log",
        "LPT0",
        "LPT9",
        ".lock",
        "desktop.ini",
        "Desktop.INI",
        "my_vti_file.txt",
        "~$report.docx",
        "tab\there.txt",
        "nul\x00byte",
    ],
)
def test_invalid_names(name: str) -> None:
    """Each OneDrive rule rejects its names with a reason."""
    assert validate_name(name)


def test_con_without_extension_reason_mentions_reserved() -> None:
    """Reserved names say so in the reason."""
    assert "reserved" in (validate_name("CON") or "")
    assert "reserved" in (validate_name("CON.txt") or "")


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("drivesync/reports/2024.pdf", True),
        ("/drivesync/x.txt", True),
        ("a//b", False),
        ("a/../b", False),
        ("../../etc/passwd", False),
        ("a/CON/b", False),
        ("/".join(["abcdefghi"] * 40), True),  # 399 characters
        ("/".join(["abcdefghi"] * 41), False),  # 409 characters
        ("", False),
    ],
)
def test_validate_path(path: str, ok: bool) -> None:
    """Paths fail on bad segments, traversal and the 400-character limit."""
    assert (validate_path(path) is None) is ok


def test_max_file_size_is_250_gb() -> None:
    """The documented upload maximum is 250 GB."""
    assert MAX_FILE_SIZE == 250 * 1024**3
