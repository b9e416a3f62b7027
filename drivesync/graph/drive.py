"""The engine's view of OneDrive: the ``Drive`` protocol and ``GraphDrive``, its Graph adapter.

The sync engine needs five things from a drive (upload, read an item, read a child by name,
the quota, close); ``GraphDrive`` does them with ``GraphClient`` and ``upload_file``, and tests
swap in ``tests.fakes.FakeDrive``. No Flask, no database: the caller builds the client.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from typing_extensions import Unpack

from drivesync.graph.client import GraphClient
from drivesync.graph.types import DriveItem
from drivesync.graph.upload import UploadOptions, UploadResult, upload_file


class Drive(Protocol):
    """What the engine needs from OneDrive: upload, read an item, read a child by name."""

    drive_type: str

    def upload(
        self, local_path: str | os.PathLike[str], parent_id: str, name: str,
        **options: Unpack[UploadOptions],
    ) -> UploadResult: ...  # fmt: skip

    def get_item(self, item_id: str) -> DriveItem: ...

    def get_child(self, parent_id: str, name: str) -> DriveItem: ...

    def quota(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


DriveFactory = Callable[[int], Drive]


class GraphDrive:
    """Adapt ``GraphClient`` + ``upload_file`` to the ``Drive`` protocol."""

    def __init__(self, client: GraphClient, drive_type: str | None = "personal") -> None:
        self.client = client
        self.drive_type = drive_type or "personal"

    def upload(
        self, local_path: str | os.PathLike[str], parent_id: str, name: str,
        **options: Unpack[UploadOptions],
    ) -> UploadResult:  # fmt: skip
        """Upload ``local_path`` as ``name`` into ``parent_id`` and verify its hash."""
        return upload_file(self.client, local_path, parent_id, name, **options)

    def get_item(self, item_id: str) -> DriveItem:
        """Return the driveItem ``item_id``."""
        return self.client.get_item(item_id)

    def get_child(self, parent_id: str, name: str) -> DriveItem:
        """Return the child ``name`` of folder ``parent_id``."""
        return self.client.get_child(parent_id, name)

    def quota(self) -> dict[str, Any]:
        """Return the drive's quota (``used``, ``total`` … in bytes)."""
        return dict(self.client.drive().get("quota") or {})

    def close(self) -> None:
        """Close the client's HTTP sessions."""
        self.client.close()
