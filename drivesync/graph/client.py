"""GraphClient: Microsoft Graph v1.0 over HTTP for one signed-in user's drive.

No Flask, no database: the caller hands in a ``token_provider(force_refresh) -> access_token``
(the service layer refreshes single-flight behind it) and gets plain dicts back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests

from drivesync.graph import logsafe, telemetry
from drivesync.graph.errors import GraphError, NameNotAllowedError, from_response, network_error
from drivesync.graph.names import validate_name
from drivesync.graph.retry import Pacer
from drivesync.graph.types import DriveItem, DriveResource, User

if TYPE_CHECKING:
    from requests.sessions import _Settings

logger = logging.getLogger(__name__)
logsafe.install()

TokenProvider = Callable[[bool], str]
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"


def quote_path(path: str) -> str:
    """Percent-encode each segment of a drive path (``#``, ``%``, ``?`` and spaces included)."""
    return "/".join(quote(segment, safe="") for segment in path.strip("/").split("/"))


def _safe_url(url: str) -> str:
    """Return ``url`` without its query string, for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class HttpSession(requests.Session):
    """A ``requests.Session`` that reads the environment once per origin, not once per request.

    With ``trust_env`` (the default) requests looks up proxies (``HTTPS_PROXY``, ``NO_PROXY``)
    and the CA bundle (``REQUESTS_CA_BUNDLE``) in ``os.environ`` on every request; walking the
    environment was a third of the client's CPU per small upload. The answer depends only on the
    scheme and host (``NO_PROXY`` matches hosts), so it is kept per origin for the session's life.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], _Settings] = {}

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        """Return requests' merged settings, computed once per origin and argument set."""
        try:
            key = (
                urlsplit(str(url))[:2], stream, verify, cert, self.trust_env,
                frozenset((proxies or {}).items()),
            )  # fmt: skip
            hash(key)
        except TypeError:  # an unhashable argument: nothing to cache
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._environment[key] = settings
        copied = settings.copy()
        copied["proxies"] = dict(settings["proxies"])  # requests may rebuild it on a redirect
        return copied


class GraphClient:
    """Microsoft Graph over HTTP. No Flask, no database."""

    def __init__(
        self,
        token_provider: TokenProvider,
        base_url: str = DEFAULT_GRAPH_URL,
        pacer: Pacer | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (10, 120),
    ) -> None:
        self._token_provider = token_provider
        self.base_url = base_url.rstrip("/")
        self.pacer = pacer or Pacer()
        self.session = session or HttpSession()
        self.timeout = timeout
        base = urlsplit(self.base_url)
        self._origin = (base.scheme, base.netloc)
        # Pre-authenticated URLs (downloads, upload sessions) must never see the bearer token,
        # so they go through this separate, credential-free session.
        self.plain_session = HttpSession()
        self.plain_session.trust_env = self.session.trust_env
        telemetry.instrument(self.session)  # client-request-id, failure logs, metrics observers
        telemetry.instrument(self.plain_session)

    def close(self) -> None:
        """Close both HTTP sessions (the Graph one and the credential-free one)."""
        self.session.close()
        self.plain_session.close()

    # -- transport -----------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Return the absolute URL for a Graph path (absolute URLs pass through)."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        allow_redirects: bool = True,
        retry: bool = True,
    ) -> requests.Response:
        """Send an authenticated request through the pacer; raise ``GraphError`` unless 2xx/3xx.

        A 401 triggers one forced token refresh and one more try (per call, not per attempt).
        """
        url = self.url(path)
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self._origin:
            # Never hand the bearer token to another host, e.g. a nextLink gone astray.
            raise GraphError("refusing to send credentials to another origin", code="badOrigin")
        refreshed = False

        def send(force_refresh: bool) -> requests.Response:
            token = self._token_provider(force_refresh)
            return self._send(
                method, url, token, params, json, data, headers, stream, allow_redirects
            )

        def attempt() -> requests.Response:
            nonlocal refreshed
            resp = send(False)
            if resp.status_code == 401 and not refreshed:
                refreshed = True
                resp.close()
                logger.info("Graph answered 401; forcing a token refresh and retrying once")
                resp = send(True)
            if resp.status_code >= 400:
                err = from_response(resp)
                resp.close()
                raise err
            return resp

        return self.pacer.call(attempt) if retry else attempt()

    def _send(
        self,
        method: str,
        url: str,
        token: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: bytes | None,
        headers: Mapping[str, str] | None,
        stream: bool,
        allow_redirects: bool,
    ) -> requests.Response:
        all_headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if headers:
            all_headers.update(headers)
        try:
            return self.session.request(
                method,
                url,
                params=params,
                json=json,
                data=data,
                headers=all_headers,
                stream=stream,
                allow_redirects=allow_redirects,
                timeout=self.timeout,
            )
        except requests.exceptions.RequestException as exc:
            logger.info("%s %s failed: %s", method, _safe_url(url), type(exc).__name__)
            raise network_error(exc) from None

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET ``path`` and return its JSON object."""
        resp = self.request("GET", path, params=params)
        try:
            return resp.json()
        finally:
            resp.close()

    # -- account ---------------------------------------------------------------------------------

    def me(self) -> User:
        """Return the signed-in user (``/me``)."""
        return self.get_json("/me")  # type: ignore[return-value]

    def drive(self) -> DriveResource:
        """Return the user's OneDrive (``/me/drive``), with ``driveType`` and ``quota``."""
        return self.get_json("/me/drive")  # type: ignore[return-value]

    def approot(self) -> DriveItem:
        """Return the app folder (``/me/drive/special/approot``), creating it on first use."""
        return self.get_json("/me/drive/special/approot")  # type: ignore[return-value]

    # -- items -----------------------------------------------------------------------------------

    @staticmethod
    def item_path(item_id: str | None = None, path: str | None = None) -> str:
        """Return the Graph path addressing an item by id, by path under root, or root itself."""
        if item_id and path:
            # Path relative to an item, the form rclone uses for shared folders
            # (https://github.com/OneDrive/onedrive-api-docs/issues/908#issuecomment-417488480).
            return f"/me/drive/items/{quote(item_id, safe='')}:/{quote_path(path)}:"
        if item_id:
            return f"/me/drive/items/{quote(item_id, safe='')}"
        if path and path.strip("/"):
            return f"/me/drive/root:/{quote_path(path)}:"
        return "/me/drive/root"

    def get_item(self, item_id: str) -> DriveItem:
        """Return the driveItem with this id."""
        return self.get_json(self.item_path(item_id))  # type: ignore[return-value]

    def get_item_by_path(self, path: str, base_id: str | None = None) -> DriveItem:
        """Return the driveItem at ``path`` under root (or under the item ``base_id``)."""
        return self.get_json(self.item_path(base_id, path))  # type: ignore[return-value]

    def get_child(self, parent_id: str, name: str) -> DriveItem:
        """Return the child called ``name`` of the folder ``parent_id``."""
        return self.get_item_by_path(name, base_id=parent_id)

    def list_children_page(
        self,
        item_id: str | None = None,
        path: str | None = None,
        top: int = 200,
        next_link: str | None = None,
    ) -> tuple[list[DriveItem], str | None]:
        """Return one page of children and the ``@odata.nextLink`` for the next, if any."""
        if next_link:
            page = self.get_json(next_link)  # the link carries its own $top and $skiptoken
        else:
            base = self.item_path(item_id, path)
            # "/root:/a:" + "/children" reads "/root:/a:/children", as Graph expects.
            page = self.get_json(f"{base}/children", params={"$top": top})
        return list(page.get("value", [])), page.get("@odata.nextLink")

    def list_children(
        self, item_id: str | None = None, path: str | None = None, top: int = 200
    ) -> Iterator[DriveItem]:
        """Yield every child of a folder, following ``@odata.nextLink`` page after page."""
        items, link = self.list_children_page(item_id, path, top)
        yield from items
        while link:
            items, link = self.list_children_page(next_link=link)
            yield from items

    def create_folder(self, parent_id: str, name: str) -> DriveItem:
        """Create folder ``name`` under ``parent_id``; 409 if it exists (conflictBehavior fail)."""
        reason = validate_name(name)
        if reason:
            raise NameNotAllowedError(reason, name)
        resp = self.request(
            "POST",
            f"{self.item_path(parent_id)}/children",
            json={"name": name, "folder": {}, "@microsoft.graph.conflictBehavior": "fail"},
        )
        try:
            return resp.json()
        finally:
            resp.close()

    def ensure_folder(self, path: str, base_id: str | None = None) -> DriveItem:
        """Return the folder at ``path`` (under root or ``base_id``), creating missing segments."""
        segments = [s for s in path.strip("/").split("/") if s]
        for segment in segments:
            reason = validate_name(segment)
            if reason:
                raise NameNotAllowedError(reason, segment)
        if not segments:
            return self.get_item(base_id) if base_id else self.get_json("/me/drive/root")  # type: ignore[return-value]
        try:
            found = self.get_item_by_path(path, base_id)  # the common case: one request
            return _must_be_folder(found, path)
        except GraphError as exc:
            if exc.status != 404:
                raise
        parent: DriveItem = (
            self.get_item(base_id) if base_id else self.get_json("/me/drive/root")  # type: ignore[assignment]
        )
        for i, segment in enumerate(segments):
            sub = "/".join(segments[: i + 1])
            try:
                parent = _must_be_folder(self.get_item_by_path(sub, base_id), sub)
                continue
            except GraphError as exc:
                if exc.status != 404:
                    raise
            try:
                parent = self.create_folder(parent["id"], segment)
            except GraphError as exc:
                if exc.status != 409:
                    raise
                # Someone (another worker) created it between our read and our POST.
                parent = _must_be_folder(self.get_item_by_path(sub, base_id), sub)
        return parent

    # -- content ---------------------------------------------------------------------------------

    def download(
        self,
        item_id: str,
        fileobj: IO[bytes],
        chunk_size: int = 1024 * 1024,
        on_progress: Callable[[int, int | None], None] | None = None,
    ) -> int:
        """Stream an item's content into ``fileobj`` and return the number of bytes written.

        ``GET /content`` answers 302 to a pre-authenticated URL
        (https://learn.microsoft.com/graph/api/driveitem-get-content); that URL is fetched with
        a credential-free session, so the bearer token never leaves graph.microsoft.com.
        """
        try:
            start: int | None = fileobj.tell() if fileobj.seekable() else None
        except (AttributeError, OSError):
            start = None

        def attempt() -> int:
            written = 0
            resp = self.request(
                "GET",
                f"{self.item_path(item_id)}/content",
                allow_redirects=False,
                stream=True,
                retry=False,
            )
            if resp.is_redirect or resp.status_code in (301, 302, 303, 307, 308):
                location = resp.headers.get("Location")
                resp.close()
                if not location:
                    raise GraphError("redirect without a Location", status=302, retryable=True)
                try:
                    resp = self.plain_session.get(
                        location, stream=True, timeout=self.timeout, allow_redirects=True
                    )
                except requests.exceptions.RequestException as exc:
                    raise network_error(exc) from None
                if resp.status_code >= 400:
                    err = from_response(resp)
                    resp.close()
                    raise err
            total = _int_or_none(resp.headers.get("Content-Length"))
            try:
                for chunk in resp.iter_content(chunk_size):
                    fileobj.write(chunk)
                    written += len(chunk)
                    if on_progress:
                        on_progress(written, total)
            except requests.exceptions.RequestException as exc:
                if start is None and written:
                    # Bytes already went to a stream we cannot rewind: a retry would corrupt it.
                    err = network_error(exc)
                    err.retryable = False
                    raise err from None
                if start is not None:
                    fileobj.seek(start)
                    fileobj.truncate()
                raise network_error(exc) from None
            finally:
                resp.close()
            if total is not None and written != total:
                if start is not None:
                    fileobj.seek(start)
                    fileobj.truncate()
                raise GraphError(
                    f"download ended after {written} of {total} bytes",
                    code="networkError",
                    retryable=start is not None,
                )
            return written

        return self.pacer.call(attempt)


def _must_be_folder(item: DriveItem, path: str) -> DriveItem:
    if "folder" not in item:
        raise GraphError(
            f"{path!r} exists on OneDrive and is not a folder",
            code="notAFolder",
            status=409,
            retryable=False,
        )
    return item


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
