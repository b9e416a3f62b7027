"""A local, strict emulator of the Microsoft identity platform and Graph's OneDrive API.

For development and tests only; ``create_emulator_app`` refuses ``DRIVESYNC_ENV=production``.
Start it with ``python -m onedrive_emulator --host 127.0.0.1 --port 8765 [--tls]`` or in-process
with :class:`onedrive_emulator.server.EmulatorServer` (``tls=True`` for HTTPS with a throw-away
CA, see :mod:`onedrive_emulator.tls`); drive it with
:class:`onedrive_emulator.client.EmulatorAdmin` (see :mod:`onedrive_emulator.admin` for the
admin routes).
"""

from __future__ import annotations

from .app import ProductionRefused, create_emulator_app

__all__ = ["ProductionRefused", "create_emulator_app"]
