"""The delta feed of one folder, page by page (``driveItem: delta``). No Flask, no database.

Microsoft's rules followed here (https://learn.microsoft.com/graph/api/driveitem-delta and the
OneDrive scan guidance, https://learn.microsoft.com/onedrive/developer/rest-api/concepts/scan-guidance):

- A first call without a token enumerates the folder's whole hierarchy; each page carries
  ``@odata.nextLink`` until the last, which carries ``@odata.deltaLink``: the cursor to store.
  Calling the deltaLink later returns only what changed since.
- "The same item may appear more than once in a delta feed, for various reasons. You should use
  the last occurrence you see": the caller keys items by id, last one wins.
- Delta items carry no ``parentReference.path``; items are tracked by id.
- Deleted items carry the ``deleted`` facet (on OneDrive for Business without a ``name``); an item
  moved out of the folder is reported deleted to it.
- ``410 Gone``: the token is no longer valid. The ``Location`` header gives the URL of a fresh
  enumeration; the error (``resyncRequired``, with ``resyncChangesApplyDifferences`` or
  ``resyncChangesUploadDifferences`` as the inner code, or as the code) says how to reconcile.
- Pages are yielded as they arrive: memory stays flat in the folder's size. Nothing is acted on
  here; the caller must not apply anything before the deltaLink (a partial listing is not one).

Links are followed only when they point at the configured Graph origin and at a delta path
(``…/delta``): a link that would send the bearer token elsewhere, or walk another resource, is
refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote

from drivesync.graph.client import GraphClient
from drivesync.graph.errors import GraphError
from drivesync.graph.types import DriveItem
from drivesync.graph.urls import graph_link_parts

PAGE_SIZE = 200
RESYNC_CODES = ("resyncChangesApplyDifferences", "resyncChangesUploadDifferences", "resyncRequired")


@dataclass(frozen=True)
class DeltaPage:
    """One page of a delta enumeration: its items, and the link to the next page or the cursor."""

    items: list[DriveItem]
    next_link: str | None
    delta_link: str | None


class DeltaGone(GraphError):
    """``410 Gone``: enumerate again (from :attr:`location` when Graph gave one)."""

    def __init__(self, kind: str, location: str | None) -> None:
        super().__init__(
            "The delta token is no longer valid; OneDrive asks for a full resync.",
            status=410,
            code="resyncRequired",
            inner_code=kind,
            retryable=False,
            location=location,
        )
        self.kind = kind

    @property
    def upload_differences(self) -> bool:
        """Return whether Graph said to upload our differences (unsure which side is newer)."""
        return self.kind == "resyncChangesUploadDifferences"


#: The scope of a drive-root enumeration (work or school drives): see :func:`delta_scope`.
ROOT = "root"


def delta_scope(folder_id: str, drive_type: str | None) -> str:
    """Return what the enumeration of the sync folder addresses: the folder itself on a
    personal drive, the drive root (:data:`ROOT`) elsewhere (see :func:`folder_delta_url`).
    Links are checked against it: :func:`is_delta_link` with ``folder_id=delta_scope(…)``."""
    return folder_id if drive_type == "personal" else ROOT


def folder_delta_url(
    client: GraphClient, drive_id: str | None, folder_id: str, drive_type: str | None = "personal"
) -> str:
    """Return the URL that starts a full enumeration covering ``folder_id`` (by id, never path).

    Personal OneDrive tracks any folder. Graph documents delta on a work or school drive (and a
    SharePoint library) on its root (``GET /drives/{drive-id}/root/delta``, driveItem-delta,
    "HTTP request"), and older notes say other folders are not supported there: those drives
    are read from the root, and the caller keeps what lies below the sync folder.
    """
    drive = f"/drives/{quote(drive_id, safe='')}" if drive_id else "/me/drive"
    if drive_type == "personal":
        return client.url(f"{drive}/items/{quote(folder_id, safe='')}/delta")
    return client.url(f"{drive}/root/delta")


#: Query keys a delta link may carry (Graph's own paging and cursor, and what we asked for).
_LINK_QUERY_KEYS = frozenset({"token", "$top", "$skiptoken", "$deltatoken", "$select", "$expand"})


def is_delta_link(link: str, base_url: str, folder_id: str | None = None) -> bool:
    """Return whether ``link`` is a delta URL on the Graph origin (same scheme, host and root).

    The link is first taken apart by ``urls.graph_link_parts`` (origin, no dot segments), as
    browse's page links are.
    With ``folder_id`` the path must be that folder's delta, whole (``me/drive/items/{id}`` or
    ``drives/{drive}/items/{id}``; ids compared ignoring case, as Personal ids vary in case), or
    with :data:`ROOT` the drive root's (``me/drive/root``, ``drives/{drive}/root``), and
    the query only Graph's paging keys: a nextLink, deltaLink or 410 Location can never widen
    the enumeration to the drive root or another folder.
    """
    found = graph_link_parts(link, base_url)
    if found is None:
        return False
    segments, keys = found
    last = segments[-1]
    if not (last == "delta" or last.startswith("delta(")):
        return False
    if segments[0] not in ("me", "drives"):
        return False
    if folder_id is None:
        return True
    head = segments[:-1]
    if head[:2] == ["me", "drive"]:
        rest = head[2:]
    elif head[:1] == ["drives"] and len(head) >= 2:
        rest = head[2:]
    else:
        return False
    if folder_id == ROOT:
        if rest != ["root"]:
            return False
    elif len(rest) != 2 or rest[0] != "items" or rest[1].lower() != folder_id.lower():
        return False
    return keys <= _LINK_QUERY_KEYS


def _gone(exc: GraphError, base_url: str, folder_id: str | None) -> DeltaGone:
    kind = next(
        (c for c in (exc.inner_code, exc.code) if c in RESYNC_CODES and c != "resyncRequired"),
        "resyncRequired",
    )
    location = exc.location
    if location and not is_delta_link(location, base_url, folder_id):
        location = None  # enumerate from scratch rather than follow a Location elsewhere
    return DeltaGone(kind, location)


def pages(client: GraphClient, start: str, folder_id: str | None = None) -> Iterator[DeltaPage]:
    """Yield the pages of the enumeration that starts at ``start``, up to the deltaLink.

    Raise :class:`DeltaGone` on ``410 Gone``, ``GraphError`` on anything else (after the
    client's own retries), and ``GraphError(code="badDeltaLink")`` for a link we refuse.
    """
    url: str | None = start
    first = True
    while url is not None:
        if not is_delta_link(url, client.base_url, folder_id):
            raise GraphError("refusing a delta link outside Graph", code="badDeltaLink")
        params = {"$top": PAGE_SIZE} if first and "token=" not in url else None
        try:
            body = client.get_json(url, params=params)
        except GraphError as exc:
            if exc.status == 410:
                raise _gone(exc, client.base_url, folder_id) from None
            raise
        first = False
        value = body.get("value")
        if not isinstance(value, list):
            raise GraphError("a delta page without a value list", code="badDeltaPage")
        next_link = body.get("@odata.nextLink")
        delta_link = body.get("@odata.deltaLink")
        if not next_link and not delta_link:
            raise GraphError("a delta page without nextLink or deltaLink", code="badDeltaPage")
        items: list[DriveItem] = [
            cast(DriveItem, i) for i in value if isinstance(i, dict) and i.get("id")
        ]
        yield DeltaPage(items, next_link or None, delta_link if not next_link else None)
        url = next_link or None
