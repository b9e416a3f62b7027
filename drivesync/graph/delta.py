"""Graph's delta feed of one folder, page by page (no Flask, no database).

Microsoft's rules, from https://learn.microsoft.com/graph/api/driveitem-delta and the scan
guidance (https://learn.microsoft.com/onedrive/developer/rest-api/concepts/scan-guidance):

- Start with ``GET …/items/{folder}/delta`` (no token); follow ``@odata.nextLink`` until a page
  carries ``@odata.deltaLink`` instead; store the deltaLink and call it next time. Only apply the
  changes after the last page ("After you have finished receiving all the changes, you may apply
  them to your local state"): :func:`iter_pages` yields pages and the caller stages them.
- The same item may appear more than once in a feed: the last occurrence wins (the caller
  upserts by item id).
- Deleted items carry the ``deleted`` facet; on business drives they carry no ``name``, and
  their ``parentReference`` may point elsewhere (never rely on it for a deleted item).
- Items carry no ``parentReference.path`` in a delta: track them by id.
- ``410 Gone`` means the token is no longer valid; the error code says how to resync and the
  ``Location`` header (when present) is where to start enumerating again:
  ``resyncChangesApplyDifferences`` (replace local items with the server's version, the service
  was up to date with our changes), ``resyncChangesUploadDifferences`` (upload local items the
  service did not return, keep both copies when unsure which is newer), ``resyncRequired``
  (start over without a token). :class:`ResyncNeeded` carries the code and the location.

Links come back from the network, so every nextLink/deltaLink is checked by
:func:`is_delta_link` before it is followed: same scheme and host as the Graph base URL, the
path exactly our folder's ``delta``, no dot segments, only paging query keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from drivesync.graph.client import GraphClient
from drivesync.graph.errors import GraphError
from drivesync.graph.types import DriveItem

#: The resync codes of a 410 (driveitem-delta, "Response"; scan guidance, "410 Gone").
RESYNC_APPLY = "resyncChangesApplyDifferences"
RESYNC_UPLOAD = "resyncChangesUploadDifferences"
RESYNC_REQUIRED = "resyncRequired"
RESYNC_CODES = (RESYNC_APPLY, RESYNC_UPLOAD, RESYNC_REQUIRED)

_LINK_QUERY_KEYS = {"token", "$top", "$skiptoken", "$deltatoken", "$select", "$expand"}


@dataclass(frozen=True)
class DeltaPage:
    """One page of the feed; ``delta_link`` is set on the last page only."""

    items: list[DriveItem]
    delta_link: str | None = None


class ResyncNeeded(GraphError):
    """Graph answered ``410 Gone``: enumerate again from ``location`` (or from scratch).

    ``code`` is one of :data:`RESYNC_CODES`; an unknown one is treated as ``resyncRequired``.
    """

    def __init__(self, code: str, location: str | None) -> None:
        super().__init__(
            "OneDrive asked for a full resynchronisation", code=code, status=410, retryable=False
        )
        self.resync_code = code if code in RESYNC_CODES else RESYNC_REQUIRED
        self.location = location


class BadDeltaLink(GraphError):
    """A nextLink/deltaLink that does not address our folder's delta on the Graph host."""

    def __init__(self) -> None:
        super().__init__("OneDrive returned a link we do not follow", code="badLink")
        self.retryable = False


def folder_delta_path(folder_id: str, drive_id: str | None = None) -> str:
    """Return the Graph path of the folder's delta function."""
    fid = quote(folder_id, safe="")
    if drive_id:
        return f"/drives/{quote(drive_id, safe='')}/items/{fid}/delta"
    return f"/me/drive/items/{fid}/delta"


def is_delta_link(link: str, base_url: str, folder_id: str | None) -> bool:
    """Return whether ``link`` is a delta link of our folder on the Graph host.

    The same rigour as Browse's next link (``services/remote._is_folder_page_link``): the path
    is compared whole, segment by segment, after refusing dot and empty segments (``requests``
    would resolve ``…/delta/../../root/delta`` into the drive root).
    """
    if not folder_id or not link:
        return False
    try:
        parts, base = urlsplit(link), urlsplit(base_url.rstrip("/"))
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or parts.fragment:
        return False
    if parts.username or parts.password or not parts.path.startswith(base.path + "/"):
        return False
    segments = [unquote(seg) for seg in parts.path[len(base.path) + 1 :].split("/")]
    if any(seg in ("", ".", "..") or "/" in seg for seg in segments):
        return False
    tail = ["items", folder_id, "delta"]
    if segments != ["me", "drive", *tail] and not (
        len(segments) == 5 and segments[0] == "drives" and segments[2:] == tail
    ):
        return False
    keys = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return keys <= _LINK_QUERY_KEYS


def iter_pages(
    client: GraphClient,
    folder_id: str,
    *,
    start: str | None = None,
    drive_id: str | None = None,
    top: int = 1000,
) -> Iterator[DeltaPage]:
    """Yield the delta feed of ``folder_id`` page by page, from ``start`` (a stored deltaLink).

    Streams: one page in memory at a time. Retries and throttling go through the client's
    pacer (``graph/retry``). Raise :class:`ResyncNeeded` on 410, :class:`BadDeltaLink` on a
    link that is not our folder's delta on the Graph host (a link elsewhere is never followed),
    ``GraphError`` otherwise; the caller then discards what it staged.
    """
    link: str | None = start
    if link is not None and not is_delta_link(link, client.base_url, folder_id):
        raise BadDeltaLink()
    while True:
        try:
            if link is None:
                page = client.get_json(folder_delta_path(folder_id, drive_id), {"$top": top})
            else:
                page = client.get_json(link)  # the link carries its own token and $top
        except GraphError as exc:
            if exc.status == 410:
                raise ResyncNeeded(_resync_code(exc), _location(exc)) from exc
            raise
        items = list(page.get("value") or [])
        next_link, delta_link = page.get("@odata.nextLink"), page.get("@odata.deltaLink")
        for found in (next_link, delta_link):
            if found is not None and not is_delta_link(str(found), client.base_url, folder_id):
                raise BadDeltaLink()
        if delta_link:
            yield DeltaPage(items, str(delta_link))
            return
        if not next_link:
            # Neither link: an incomplete answer. Never act on it (the caller discards it).
            raise GraphError(
                "OneDrive's change list ended without a delta link",
                code="incompleteDelta",
                retryable=True,
            )
        yield DeltaPage(items)
        link = str(next_link)


def _resync_code(exc: GraphError) -> str:
    code = exc.code or ""
    for candidate in (exc.inner_code or "", code):
        if candidate in RESYNC_CODES:
            return candidate
    return RESYNC_REQUIRED


def _location(exc: GraphError) -> str | None:
    return exc.location or None
