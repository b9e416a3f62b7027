"""Browse the user's OneDrive folder and import a OneDrive file into the library (streamed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ..extensions import db
from ..graph.errors import AuthError, GraphError
from ..models import File
from . import library, quota, sync
from .errors import Conflict, NotFound, ServiceError
from .integrations import ReauthRequired, graph_client_for
from .storage import LocalStorage

logger = logging.getLogger(__name__)

BROWSE_PAGE = 50


@dataclass(frozen=True)
class RemoteEntry:
    """One item of the OneDrive folder as the browse page shows it."""

    id: str
    name: str
    size: int
    is_folder: bool
    mime_type: str | None
    modified: str | None
    web_url: str | None


@dataclass(frozen=True)
class RemotePage:
    """One page of the folder listing, and the opaque link to the next one."""

    folder_path: str
    entries: list[RemoteEntry]
    next_link: str | None


def _entry(item: dict[str, Any]) -> RemoteEntry:
    return RemoteEntry(
        id=str(item.get("id")),
        name=str(item.get("name", "")),
        size=int(item.get("size") or 0),
        is_folder="folder" in item,
        mime_type=(item.get("file") or {}).get("mimeType"),
        modified=item.get("lastModifiedDateTime"),
        web_url=item.get("webUrl"),
    )


def _graph_failure(exc: GraphError) -> ServiceError:
    if isinstance(exc, AuthError):
        return ReauthRequired()
    err = ServiceError(f"OneDrive could not be reached: {exc.human_message()}")
    err.status = 502
    return err


def _is_folder_page_link(link: str, base_url: str, folder_id: str | None) -> bool:
    """Return whether ``link`` is Graph's next-page link for our folder's children."""
    path = urlsplit(link).path
    return (
        link.startswith(base_url.rstrip("/") + "/")
        and bool(folder_id)
        and f"/items/{folder_id}/children" in unquote(path)
    )


def browse(user_id: int, next_link: str | None = None) -> RemotePage:
    """Return one page of the user's target folder on OneDrive."""
    client, integration = graph_client_for(user_id)
    if next_link and not _is_folder_page_link(next_link, client.base_url, integration.folder_id):
        raise NotFound("That page of your OneDrive folder does not exist.")
    try:
        items, nxt = client.list_children_page(
            item_id=integration.folder_id, top=BROWSE_PAGE, next_link=next_link or None
        )
    except GraphError as exc:
        raise _graph_failure(exc) from exc
    return RemotePage(
        folder_path=integration.folder_path, entries=[_entry(i) for i in items], next_link=nxt
    )


def import_item(user_id: int, item_id: str, storage: LocalStorage) -> File:
    """Copy a OneDrive file of the user's target folder into their library, streamed to disk."""
    client, integration = graph_client_for(user_id)
    try:
        item = client.get_item(item_id)
    except GraphError as exc:
        if exc.status in (400, 404):
            raise NotFound("That OneDrive file does not exist.") from exc
        raise _graph_failure(exc) from exc
    parent = (item.get("parentReference") or {}).get("id")
    if "file" not in item or parent != integration.folder_id:
        # Only files of the folder we sync are importable: no walking the rest of the drive.
        raise NotFound("That OneDrive file does not exist.")
    linked = db.session.execute(
        db.select(File.original_name).where(File.owner_id == user_id, File.onedrive_id == item_id)
    ).scalar_one_or_none()
    if linked is not None:
        # Two library files tracking one OneDrive item would overwrite each other's versions.
        raise Conflict(f"This OneDrive file is already in your library as {linked}.")
    # Imports count toward the upload limit and the quota like uploads (probe finding M2).
    size = item.get("size")
    meter = quota.check_import(user_id, int(size) if isinstance(size, int) else None)
    incoming = storage.new_incoming(meter.take)
    try:
        client.download(item_id, incoming)
    except GraphError as exc:
        storage.discard(incoming)
        raise _graph_failure(exc) from exc
    except BaseException:
        storage.discard(incoming)
        raise
    f = library.add_file(user_id, str(item.get("name", "imported")), incoming, storage)
    remote_hash = ((item.get("file") or {}).get("hashes") or {}).get("quickXorHash")
    if remote_hash and remote_hash == f.quick_xor_hash:
        # It is OneDrive's copy byte for byte: track it as synced instead of uploading it back.
        sync.link_to_item(user_id, f.id, item, f.content_hash)
        db.session.refresh(f)
    logger.info("user %s imported a OneDrive file into file %s", user_id, f.id)
    return f
