"""A local, strict emulator of the Microsoft identity platform and Graph's OneDrive API.

For development and tests only; ``create_emulator_app`` refuses ``DRIVESYNC_ENV=production``.
Start it with ``python -m drivesync.emulator --host 127.0.0.1 --port 8765`` or in-process with
:class:`drivesync.emulator.server.EmulatorServer`; drive it with
:class:`drivesync.emulator.client.EmulatorAdmin` (see :mod:`drivesync.emulator.admin` for the
admin routes).
"""

from __future__ import annotations

from .app import ProductionRefused, create_emulator_app

__all__ = ["ProductionRefused", "create_emulator_app"]
