"""FakeDrive: an in-memory ``graph.drive.Drive`` for the sync engine's tests. No HTTP at all."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

from typing_extensions import Unpack

from drivesync.graph.errors import GraphError
from drivesync.graph.quickxor import QuickXorHash
from drivesync.graph.upload import DEFAULT_FRAGMENT, UploadOptions, UploadResult

FOLDER_ID = "folder-drivesync"
FOLDER_PATH = "/drive/root:/drivesync"


class WorkerKilled(BaseException):  # noqa: N818 - named for what it stands for
    """Stands for SIGKILL: escapes every ``except Exception``, so the claim is left behind."""


def not_found() -> GraphError:
    """Return the error Graph gives for a missing item."""
    return GraphError("Item not found", status=404, code="itemNotFound")


class FakeDrive:
    """An in-memory drive: items by id, a (parent, lower-cased name) index, scriptable faults.

    ``fail_uploads(exc, n)`` makes the next ``n`` uploads raise ``exc``; ``during_upload`` is
    called once per upload after the first progress report (to race a replace or a claim);
    ``calls`` records every method call as ``(method, name-or-id, conflict_behavior)``;
    ``kill_after = n`` makes the next upload die (``WorkerKilled``) once ``n`` fragments are
    acknowledged; ``resumes`` records the stored session URL each upload was asked to resume.
    """

    def __init__(self, drive_type: str = "personal") -> None:
        self.drive_type = drive_type
        self.items: dict[str, dict[str, Any]] = {}
        self.content: dict[str, bytes] = {}
        self.calls: list[tuple[str, str, str | None]] = []
        self.sessions: list[str] = []
        self.failures: list[BaseException] = []
        self.during_upload: Callable[[str], None] | None = None
        self.upload_delay = 0.0
        self.kill_after: int | None = None
        self.resumes: list[str | None] = []
        self.closed = 0
        self.service_modifies = False
        self.quota_total = 5 * 1024**3
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self.items[FOLDER_ID] = {
            "id": FOLDER_ID, "name": "drivesync", "folder": {}, "eTag": '"folder,1"',
            "parentReference": {"id": "root"},
        }  # fmt: skip

    # -- scripting -----------------------------------------------------------------------------

    def fail_uploads(self, exc: BaseException, count: int = 1) -> None:
        """Make the next ``count`` uploads raise ``exc``."""
        with self._lock:
            self.failures.extend([exc] * count)

    def add_file(self, name: str, data: bytes, parent_id: str = FOLDER_ID) -> dict[str, Any]:
        """Create a file on the "server side" (someone else's upload); return its item."""
        with self._lock:
            return self._store(parent_id, name, data, None)

    def modify(self, item_id: str, data: bytes) -> dict[str, Any]:
        """Change an item's content on the server side (new eTag, cTag and hash)."""
        with self._lock:
            item = self.items[item_id]
            return self._store(item["parentReference"]["id"], item["name"], data, item_id)

    def child(self, name: str, parent_id: str = FOLDER_ID) -> dict[str, Any] | None:
        """Return the child ``name`` of ``parent_id`` (case-insensitive), or None."""
        with self._lock:
            for item in self.items.values():
                if (item.get("parentReference") or {}).get("id") == parent_id and item[
                    "name"
                ].lower() == name.lower():
                    return item
            return None

    def uploads(self) -> list[tuple[str, str, str | None]]:
        """Return the recorded upload calls."""
        return [c for c in self.calls if c[0] == "upload"]

    # -- the Drive protocol --------------------------------------------------------------------

    def upload(
        self, local_path: str | os.PathLike[str], parent_id: str, name: str,
        **options: Unpack[UploadOptions],
    ) -> UploadResult:  # fmt: skip
        """Store the local file's bytes as ``name`` in ``parent_id``, like upload_file."""
        conflict_behavior = options.get("conflict_behavior", "fail")
        fragment_size = options.get("fragment_size", DEFAULT_FRAGMENT)
        if_match, resume = options.get("if_match"), options.get("resume")
        on_progress, on_session = options.get("on_progress"), options.get("on_session")
        with self._lock:
            self.calls.append(("upload", name, conflict_behavior))
            self.resumes.append(resume.upload_url if resume is not None else None)
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure
        with open(local_path, "rb") as fh:
            data = fh.read()
        size = len(data)
        if size > fragment_size and on_session is not None and resume is None:
            url = f"https://upload.example/session/{next(self._ids)}?tempauth=secret"
            self.sessions.append(url)
            on_session(url, None)
        if on_progress is not None:
            for sent in range(0, size, fragment_size):
                on_progress(sent, size)
                if sent == 0 and self.during_upload is not None:
                    self.during_upload(name)
                if self.kill_after is not None and sent == self.kill_after * fragment_size:
                    self.kill_after = None
                    raise WorkerKilled()
            on_progress(size, size)
        if size == 0 and self.during_upload is not None:
            self.during_upload(name)
        if self.upload_delay:
            threading.Event().wait(self.upload_delay)
        with self._lock:
            existing = self.child(name, parent_id)
            if existing is not None:
                if conflict_behavior == "fail":
                    raise GraphError("Name already exists", status=409, code="nameAlreadyExists")
                if conflict_behavior == "rename":
                    name = self._free_name(parent_id, name)
                    existing = None
            if if_match and (existing is None or if_match not in (existing["eTag"],
                                                                    existing["cTag"])):  # fmt: skip
                raise GraphError("eTag mismatch", status=412, code="resourceModified")
            item = self._store(parent_id, name, data, existing["id"] if existing else None)
            local = QuickXorHash(data).b64digest()
            if self.service_modifies:
                item = self._store(parent_id, name, data + b"<meta/>", item["id"])
                return UploadResult(dict(item), local, _hash(item), hash_matched=False,  # type: ignore[arg-type]
                                    service_modified=True)  # fmt: skip
            return UploadResult(dict(item), local, _hash(item), hash_matched=True)  # type: ignore[arg-type]

    def get_item(self, item_id: str) -> dict[str, Any]:
        """Return a copy of the item ``item_id`` or raise a 404 GraphError."""
        with self._lock:
            self.calls.append(("get_item", item_id, None))
            if item_id not in self.items:
                raise not_found()
            return dict(self.items[item_id])

    def get_child(self, parent_id: str, name: str) -> dict[str, Any]:
        """Return a copy of the child ``name`` of ``parent_id`` or raise a 404 GraphError."""
        with self._lock:
            self.calls.append(("get_child", name, None))
            item = self.child(name, parent_id)
            if item is None:
                raise not_found()
            return dict(item)

    def quota(self) -> dict[str, int]:
        """Return a quota whose ``used`` is the bytes stored, like OneDrive's."""
        with self._lock:
            used = sum(len(data) for data in self.content.values())
        return {"used": used, "total": self.quota_total, "remaining": self.quota_total - used}

    def close(self) -> None:
        """Count closes (the engine closes every drive it makes)."""
        with self._lock:
            self.closed += 1

    # -- internals -----------------------------------------------------------------------------

    def _free_name(self, parent_id: str, name: str) -> str:
        stem, ext = os.path.splitext(name)
        for n in itertools.count(1):
            candidate = f"{stem} {n}{ext}"
            if self.child(candidate, parent_id) is None:
                return candidate
        raise AssertionError("unreachable")

    def _store(self, parent_id: str, name: str, data: bytes, item_id: str | None) -> dict[str, Any]:
        item_id = item_id or f"item-{next(self._ids)}"
        old = self.items.get(item_id)
        version = (int(old["eTag"].strip('"').rsplit(",", 1)[1]) + 1) if old else 1
        self.content[item_id] = data
        self.items[item_id] = {
            "id": item_id,
            "name": name,
            "size": len(data),
            "eTag": f'"{item_id},{version}"',
            "cTag": f'"c:{item_id},{version}"',
            "webUrl": f"https://onedrive.example/{item_id}",
            "file": {"hashes": {"quickXorHash": QuickXorHash(data).b64digest()}},
            "parentReference": {
                "id": parent_id,
                "path": FOLDER_PATH,
                "driveType": self.drive_type,
            },  # fmt: skip
        }
        return self.items[item_id]


def _hash(item: dict[str, Any]) -> str:
    return str(item["file"]["hashes"]["quickXorHash"])
