"""GraphClient: auth retry, paging, paths, folders, downloads, deletes."""

from __future__ import annotations

import io

import pytest
import requests
import responses
from responses import matchers

from drivesync.graph.client import GraphClient, quote_path
from drivesync.graph.errors import GraphError, NameNotAllowedError

from .conftest import FRESH_TOKEN, GRAPH, TOKEN, TokenProvider

ME = f"{GRAPH}/me"


def test_me_sends_bearer_token(rsps: responses.RequestsMock, client: GraphClient) -> None:
    """Authenticated calls carry the provider's token as a bearer token."""
    rsps.add(responses.GET, ME, json={"id": "u1", "displayName": "Ada"})
    assert client.me()["displayName"] == "Ada"
    assert rsps.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_401_forces_one_refresh_then_succeeds(
    rsps: responses.RequestsMock, client: GraphClient, tokens: TokenProvider
) -> None:
    """A 401 makes the client force one refresh and retry with the new token."""
    rsps.add(
        responses.GET,
        ME,
        status=401,
        json={"error": {"code": "InvalidAuthenticationToken", "message": "expired"}},
    )
    rsps.add(responses.GET, ME, json={"id": "u1"})
    assert client.me()["id"] == "u1"
    assert tokens.calls == [False, True]
    assert rsps.calls[1].request.headers["Authorization"] == f"Bearer {FRESH_TOKEN}"


def test_401_twice_raises(
    rsps: responses.RequestsMock, client: GraphClient, tokens: TokenProvider, sleeps: list[float]
) -> None:
    """A second 401 after the forced refresh is raised, without a retry storm."""
    rsps.add(
        responses.GET,
        ME,
        status=401,
        json={"error": {"code": "InvalidAuthenticationToken", "message": "nope"}},
    )
    with pytest.raises(GraphError) as info:
        client.me()
    assert info.value.status == 401 and not info.value.retryable
    assert tokens.calls == [False, True] and len(rsps.calls) == 2 and sleeps == []


def test_throttled_call_honours_retry_after(
    rsps: responses.RequestsMock, client: GraphClient, sleeps: list[float]
) -> None:
    """A 429 with Retry-After waits at least that long, then succeeds."""
    rsps.add(
        responses.GET,
        f"{GRAPH}/me/drive",
        status=429,
        headers={"Retry-After": "7"},
        json={"error": {"code": "activityLimitReached", "message": "slow down"}},
    )
    rsps.add(responses.GET, f"{GRAPH}/me/drive", json={"id": "d1", "driveType": "personal"})
    assert client.drive()["driveType"] == "personal"
    assert sleeps == [7.0]


def test_list_children_follows_next_link(rsps: responses.RequestsMock, client: GraphClient) -> None:
    """Listing follows @odata.nextLink across pages and yields every child once."""
    first = f"{GRAPH}/me/drive/items/F/children"
    page2 = f"{GRAPH}/me/drive/items/F/children?$skiptoken=abc&$top=2"
    page3 = f"{GRAPH}/me/drive/items/F/children?$skiptoken=def&$top=2"
    rsps.add(
        responses.GET,
        first,
        match=[matchers.query_param_matcher({"$top": "2"})],
        json={"value": [{"id": "1"}, {"id": "2"}], "@odata.nextLink": page2},
    )
    rsps.add(
        responses.GET,
        page2.split("?")[0],
        match=[matchers.query_param_matcher({"$skiptoken": "abc", "$top": "2"})],
        json={"value": [{"id": "3"}, {"id": "4"}], "@odata.nextLink": page3},
    )
    rsps.add(
        responses.GET,
        page3.split("?")[0],
        match=[matchers.query_param_matcher({"$skiptoken": "def", "$top": "2"})],
        json={"value": [{"id": "5"}]},
    )
    assert [i["id"] for i in client.list_children("F", top=2)] == ["1", "2", "3", "4", "5"]


def test_list_children_page_returns_next_link(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """One page at a time, for UI paging, with the link to the next page."""
    link = f"{GRAPH}/me/drive/root:/a%20b:/children?$skiptoken=x"
    rsps.add(
        responses.GET,
        f"{GRAPH}/me/drive/root:/a%20b:/children",
        json={"value": [{"id": "1"}], "@odata.nextLink": link},
    )
    items, next_link = client.list_children_page(path="a b", top=1)
    assert items == [{"id": "1"}] and next_link == link


def test_next_link_to_another_host_is_refused(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """The bearer token is never sent to a host other than the Graph base URL."""
    with pytest.raises(GraphError) as info:
        client.list_children_page(next_link="https://evil.example/steal")
    assert info.value.code == "badOrigin" and not rsps.calls


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.txt", "a.txt"),
        ("/Docs/My File #1.txt", "Docs/My%20File%20%231.txt"),
        ("x/100%/é?.bin", "x/100%25/%C3%A9%3F.bin"),
    ],
)
def test_quote_path(path: str, expected: str) -> None:
    """Each path segment is percent-encoded, slashes kept."""
    assert quote_path(path) == expected


def test_get_item_by_path_encodes_segments(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """get_item_by_path addresses /me/drive/root:/<encoded path>:."""
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root:/a%20b/c%23d.txt:", json={"id": "X"})
    assert client.get_item_by_path("a b/c#d.txt")["id"] == "X"


def test_ensure_folder_existing_costs_one_request(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """An existing folder is found with a single GET."""
    rsps.add(
        responses.GET, f"{GRAPH}/me/drive/root:/drivesync/sub:", json={"id": "S", "folder": {}}
    )
    assert client.ensure_folder("drivesync/sub")["id"] == "S" and len(rsps.calls) == 1


def test_ensure_folder_creates_missing_segments(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """Missing segments are created one by one with conflictBehavior fail."""
    not_found = {"error": {"code": "itemNotFound", "message": "no"}}
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root:/a/b:", status=404, json=not_found)
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root", json={"id": "ROOT", "folder": {}})
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root:/a:", json={"id": "A", "folder": {}})
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root:/a/b:", status=404, json=not_found)
    rsps.add(
        responses.POST,
        f"{GRAPH}/me/drive/items/A/children",
        match=[
            matchers.json_params_matcher(
                {"name": "b", "folder": {}, "@microsoft.graph.conflictBehavior": "fail"}
            )
        ],
        status=201,
        json={"id": "B", "folder": {}},
    )
    assert client.ensure_folder("a/b")["id"] == "B"


def test_ensure_folder_tolerates_a_racing_creator(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """A 409 on create (another worker won the race) is resolved by reading the folder."""
    not_found = {"error": {"code": "itemNotFound", "message": "no"}}
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root:/a:", status=404, json=not_found)
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root", json={"id": "ROOT", "folder": {}})
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root:/a:", status=404, json=not_found)
    rsps.add(
        responses.POST,
        f"{GRAPH}/me/drive/items/ROOT/children",
        status=409,
        json={"error": {"code": "nameAlreadyExists", "message": "exists"}},
    )
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root:/a:", json={"id": "A", "folder": {}})
    assert client.ensure_folder("a")["id"] == "A"


def test_ensure_folder_refuses_a_file_in_the_way(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """A file where a folder should be is an error, not a silent success."""
    rsps.add(responses.GET, f"{GRAPH}/me/drive/root:/a:", json={"id": "F", "file": {}})
    with pytest.raises(GraphError) as info:
        client.ensure_folder("a")
    assert info.value.code == "notAFolder"


def test_ensure_folder_checks_names_first(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """An invalid segment fails before any request."""
    with pytest.raises(NameNotAllowedError):
        client.ensure_folder("ok/bad:name")
    assert not rsps.calls


def test_download_follows_302_without_bearer(
    rsps: responses.RequestsMock, client: GraphClient
) -> None:
    """The content redirect is fetched without the Authorization header, streamed to the file."""
    target = "https://public.fake-1drv.test/dl/abc?tempauth=SECRET"
    rsps.add(
        responses.GET, f"{GRAPH}/me/drive/items/I/content", status=302, headers={"Location": target}
    )
    rsps.add(
        responses.GET, target.split("?")[0], body=b"x" * 3000, headers={"Content-Length": "3000"}
    )
    out = io.BytesIO()
    progress: list[tuple[int, int | None]] = []
    n = client.download(
        "I", out, chunk_size=1024, on_progress=lambda done, total: progress.append((done, total))
    )
    assert n == 3000 and out.getvalue() == b"x" * 3000
    assert rsps.calls[0].request.headers["Authorization"].startswith("Bearer ")
    assert "Authorization" not in rsps.calls[1].request.headers
    assert progress[-1] == (3000, 3000)


def test_download_retry_rewinds_the_file(
    rsps: responses.RequestsMock, client: GraphClient, sleeps: list[float]
) -> None:
    """A download that fails on the way is retried from scratch into a rewound file."""
    target = "https://public.fake-1drv.test/dl/abc"
    for _ in range(2):
        rsps.add(
            responses.GET,
            f"{GRAPH}/me/drive/items/I/content",
            status=302,
            headers={"Location": target},
        )
    rsps.add(responses.GET, target, body=requests.exceptions.ConnectionError("reset"))
    rsps.add(responses.GET, target, body=b"hello")
    out = io.BytesIO(b"prefix:")
    out.seek(0, io.SEEK_END)
    assert client.download("I", out) == 5
    assert out.getvalue() == b"prefix:hello" and len(sleeps) == 1


def test_request_passes_if_match(rsps: responses.RequestsMock, client: GraphClient) -> None:
    """A generic request carries the caller's If-Match, so a changed item is not deleted."""
    rsps.add(
        responses.DELETE,
        f"{GRAPH}/me/drive/items/I",
        status=204,
        match=[matchers.header_matcher({"If-Match": "etag-1"})],
    )
    client.request("DELETE", client.item_path("I"), headers={"If-Match": "etag-1"}).close()


def test_request_on_missing_item(rsps: responses.RequestsMock, client: GraphClient) -> None:
    """A 404 on delete is raised as a GraphError carrying Graph's code."""
    body = {"error": {"code": "itemNotFound", "message": "gone"}}
    rsps.add(responses.DELETE, f"{GRAPH}/me/drive/items/I", status=404, json=body)
    with pytest.raises(GraphError) as info:
        client.request("DELETE", client.item_path("I"))
    assert info.value.code == "itemNotFound"


def test_connection_error_is_retried_and_wrapped(
    rsps: responses.RequestsMock, client: GraphClient, sleeps: list[float]
) -> None:
    """Transport errors are retried, and the final error carries no URL."""
    rsps.add(
        responses.GET,
        f"{GRAPH}/me/drive/special/approot",
        body=requests.exceptions.ConnectionError("pool: /me/drive?secret=1"),
    )
    with pytest.raises(GraphError) as info:
        client.approot()
    assert info.value.code == "networkError" and "secret" not in str(info.value)
    assert len(sleeps) == 5  # six attempts


def test_urllib3_request_lines_lose_their_query_string() -> None:
    """urllib3's DEBUG request line is logged without the upload URL's query string."""
    import logging

    from drivesync.graph.logsafe import StripQueryFilter

    record = logging.LogRecord(
        "urllib3.connectionpool",
        logging.DEBUG,
        __file__,
        1,
        '%s://%s:%s "%s %s %s" %s %s',
        ("https", "up.1drv.com", 443, "PUT", "/up/abc?tempauth=SECRET", "HTTP/1.1", 202, 0),
        None,
    )
    assert StripQueryFilter().filter(record)
    assert "SECRET" not in record.getMessage() and "/up/abc?[redacted]" in record.getMessage()


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        (
            "/_download/eyJkIjogIjE0ZThjMDdmZjFmZDdmNzMiLCAiaSI6.GT3_uXC9tF0eE22aeivLQTWnHVvK3H",
            "/_download/[redacted]",
        ),
        (
            "/y4mQ3ZpZGVvX2Zyb20tcGhvbmUuanBnP2Rvd25sb2FkPTEmYXV0aD1zZWNyZXQ/photo.jpg",
            "/[redacted]/photo.jpg",
        ),
        (
            "/v1.0/drives/b!x/items/01BYE5RZ6QN3ZWBTUFOFD3GSPGOHDJD36K/content",
            "/v1.0/drives/b!x/items/01BYE5RZ6QN3ZWBTUFOFD3GSPGOHDJD36K/content",
        ),
    ],
)
def test_urllib3_request_lines_lose_credentials_in_paths(path: str, kept: str) -> None:
    """Long opaque path segments (pre-authenticated URLs) are redacted; Graph paths stay."""
    import logging

    from drivesync.graph.logsafe import StripQueryFilter

    record = logging.LogRecord(
        "urllib3.connectionpool",
        logging.DEBUG,
        __file__,
        1,
        '%s://%s:%s "%s %s %s" %s %s',
        ("https", "host", 443, "GET", path, "HTTP/1.1", 200, 0),
        None,
    )
    assert StripQueryFilter().filter(record)
    assert kept in record.getMessage()
