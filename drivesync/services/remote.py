"""Browse the user's OneDrive folder (imports run as jobs: ``services/imports.py``)."""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

from ..extensions import db
from ..graph.errors import AuthError, GraphError
from ..graph.types import DriveItem
from ..graph.urls import graph_link_parts
from ..models import File
from .errors import NotFound, ServiceError
from .integrations import ReauthRequired, graph_client_for

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
    library_file_id: int | None = None  # the library file that tracks this item, if one does
    library_name: str | None = None


@dataclass(frozen=True)
class RemotePage:
    """One page of the folder listing, and the opaque link to the next one."""

    folder_path: str
    entries: list[RemoteEntry]
    next_link: str | None


def _entry(item: DriveItem, linked: dict[str, tuple[int, str]]) -> RemoteEntry:
    file_id, name = linked.get(str(item.get("id")), (None, None))
    return RemoteEntry(
        id=str(item.get("id")),
        # Shown on the browse page: drop bidi overrides and other controls (probe I9).
        name="".join(c for c in str(item.get("name", "")) if unicodedata.category(c)[0] != "C"),
        size=int(item.get("size") or 0),
        is_folder="folder" in item,
        mime_type=(item.get("file") or {}).get("mimeType"),
        modified=item.get("lastModifiedDateTime"),
        web_url=item.get("webUrl"),
        library_file_id=file_id,
        library_name=name,
    )


def _linked_files(user_id: int, item_ids: list[str]) -> dict[str, tuple[int, str]]:
    """Return, for those of ``item_ids`` the user's library tracks, the file's id and name."""
    if not item_ids:
        return {}
    rows = db.session.execute(
        db.select(File.onedrive_id, File.id, File.original_name).where(
            File.owner_id == user_id, File.onedrive_id.in_(item_ids)
        )
    ).all()
    return {str(item_id): (file_id, name) for item_id, file_id, name in rows}


def graph_failure(exc: GraphError) -> ServiceError:
    """Return the service error that tells the user why OneDrive could not be reached."""
    if isinstance(exc, AuthError):
        return ReauthRequired()
    err = ServiceError(f"OneDrive could not be reached: {exc.human_message()}")
    err.status = 502
    return err


_PAGE_QUERY_KEYS = {"$top", "$skiptoken", "$skip", "$select", "$expand", "$orderby"}


def _is_folder_page_link(link: str, base_url: str, folder_id: str | None) -> bool:
    """Return whether ``link`` is Graph's next-page link for our folder's children.

    The path is compared whole, segment by segment, after ``urls.graph_link_parts`` refused
    another origin and dot or empty segments (probe L4).
    """
    if not folder_id:
        return False
    found = graph_link_parts(link, base_url)
    if found is None:
        return False
    segments, keys = found
    tail = ["items", folder_id, "children"]
    if segments != ["me", "drive", *tail] and not (
        len(segments) == 5 and segments[0] == "drives" and segments[2:] == tail
    ):
        return False
    return keys <= _PAGE_QUERY_KEYS


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
        raise graph_failure(exc) from exc
    linked = _linked_files(user_id, [str(i.get("id")) for i in items if "file" in i])
    return RemotePage(
        folder_path=integration.folder_path,
        entries=[_entry(i, linked) for i in items],
        next_link=nxt,
    )
