"""Fixtures for tests that run the app against the local OneDrive emulator over sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

# The emulator fixtures live in tests/fixtures_emulator.py (a plugin of the root conftest) so
# that tests/security can use them too; the names stay importable from here.
from tests.fixtures_emulator import (  # noqa: F401
    ALEX,
    CALLBACK,
    CLIENT_ID,
    CLIENT_SECRET,
    MEGAN,
    consent,
    csrf_from,
    query,
)


@pytest.fixture
def app_overrides(emulator_config: dict[str, Any]) -> dict[str, Any]:
    """Point every app in these tests at the emulator."""
    return emulator_config


@pytest.fixture
def alice(
    make_user: Callable[..., int], login: Callable[[int], None], connect: Any, emu: Any
) -> int:
    """A signed-in user whose OneDrive (Alex's, on the emulator) is connected.

    ``emu`` comes first: its reset after the connect would wipe the tokens just issued.
    """
    uid = make_user("alice@example.com")
    login(uid)
    assert connect(ALEX).status_code == 303
    return uid
