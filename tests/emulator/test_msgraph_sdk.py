"""Microsoft's official Python SDK (msgraph-sdk), unchanged, against the emulator.

Only the transport is pointed elsewhere: a ``GraphRequestAdapter`` built with the SDK's default
middleware (so its RetryHandler and RedirectHandler run), ``base_url`` set to the emulator, and
a kiota ``BaseBearerTokenAuthenticationProvider`` returning a token minted by the emulator.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from kiota_abstractions.authentication import (
    AccessTokenProvider,
    AllowedHostsValidator,
    BaseBearerTokenAuthenticationProvider,
)
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.drives.item.items.item.create_upload_session.create_upload_session_post_request_body import (  # noqa: E501
    CreateUploadSessionPostRequestBody,
)
from msgraph.generated.models.drive_item import DriveItem
from msgraph.generated.models.drive_item_uploadable_properties import (
    DriveItemUploadableProperties,
)
from msgraph.generated.models.folder import Folder
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph_core.tasks.page_iterator import PageIterator

from .conftest import ALEX, CLIENT_ID, Env, run_async
from .test_graph import qxh

pytestmark = [
    pytest.mark.emulator,
    # The SDK's own deprecation noise (pyproject turns warnings into errors).
    pytest.mark.filterwarnings("ignore::DeprecationWarning:kiota_abstractions.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:kiota_http.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:msgraph_core.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:msgraph.*"),
]

UNIT = 327_680


class StaticToken(AccessTokenProvider):
    """Hand the SDK a token minted by the emulator."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def get_authorization_token(
        self, uri: str, additional_authentication_context: dict[str, Any] | None = None
    ) -> str:
        return self.token

    def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
        return AllowedHostsValidator([])


def make_client(env: Env, email: str = ALEX) -> GraphServiceClient:
    token = env.admin.mint_token(email, CLIENT_ID)["access_token"]
    adapter = GraphRequestAdapter(BaseBearerTokenAuthenticationProvider(StaticToken(token)))
    adapter.base_url = env.graph
    return GraphServiceClient(request_adapter=adapter)


def run(coro):
    return run_async(coro)


async def _drive_id(client: GraphServiceClient) -> str:
    drive = await client.me.drive.get()
    return drive.id


@pytest.mark.slow  # the first msgraph import alone takes a few seconds
def test_get_drive_and_list_children_with_page_iterator(env: Env) -> None:
    for i in range(5):
        env.admin.modify_item(ALEX, f"folder/f{i}.txt", b"x" * i)

    async def scenario() -> list[str]:
        client = make_client(env)
        drive = await client.me.drive.get()
        assert drive.drive_type == "personal" and drive.quota.total > 0
        items = client.drives.by_drive_id(drive.id).items
        folder = await items.by_drive_item_id("root:/folder:").get()
        assert folder.folder.child_count == 5
        from msgraph.generated.drives.item.items.item.children.children_request_builder import (
            ChildrenRequestBuilder,
        )

        config = ChildrenRequestBuilder.ChildrenRequestBuilderGetRequestConfiguration(
            query_parameters=ChildrenRequestBuilder.ChildrenRequestBuilderGetQueryParameters(top=2)
        )
        first = await items.by_drive_item_id(folder.id).children.get(request_configuration=config)
        assert first.odata_next_link
        names: list[str] = []

        def collect(item: DriveItem) -> bool:
            names.append(item.name)
            return True

        iterator = PageIterator(first, client.request_adapter)
        await iterator.iterate(collect)
        return names

    assert run(scenario()) == [f"f{i}.txt" for i in range(5)]


def test_simple_upload_download_delete(env: Env) -> None:
    data = os.urandom(200_000)

    async def scenario() -> None:
        client = make_client(env)
        drive_id = await _drive_id(client)
        items = client.drives.by_drive_id(drive_id).items
        uploaded = await items.by_drive_item_id("root:/sdk/hello.bin:").content.put(data)
        assert uploaded.size == len(data)
        assert uploaded.file.hashes.quick_xor_hash == qxh(data)
        downloaded = await items.by_drive_item_id(uploaded.id).content.get()
        assert downloaded == data
        await items.by_drive_item_id(uploaded.id).delete()
        with pytest.raises(ODataError) as err:
            await items.by_drive_item_id(uploaded.id).get()
        assert err.value.response_status_code == 404
        assert err.value.error.code == "itemNotFound"

    run(scenario())


def test_create_upload_session_and_upload_fragments(env: Env) -> None:
    data = os.urandom(UNIT * 3 + 12345)

    async def scenario() -> None:
        client = make_client(env)
        drive_id = await _drive_id(client)
        body = CreateUploadSessionPostRequestBody(
            item=DriveItemUploadableProperties(
                additional_data={"@microsoft.graph.conflictBehavior": "replace"}
            )
        )
        session = await (
            client.drives.by_drive_id(drive_id)
            .items.by_drive_item_id("root:/sdk/big.bin:")
            .create_upload_session.post(body)
        )
        assert session.upload_url and session.next_expected_ranges == ["0-"]
        async with httpx.AsyncClient(timeout=10) as raw:
            start, step = 0, UNIT * 2
            while start < len(data):
                piece = data[start : start + step]
                resp = await raw.put(
                    session.upload_url,
                    content=piece,
                    headers={
                        "Content-Range": f"bytes {start}-{start + len(piece) - 1}/{len(data)}"
                    },
                )
                start += len(piece)
            assert resp.status_code == 201
            assert resp.json()["file"]["hashes"]["quickXorHash"] == qxh(data)

    run(scenario())
    uploads = [e for e in env.admin.requests_log() if e["path"].startswith("/_upload/")]
    assert uploads and not any(e["had_authorization_header"] for e in uploads)


def test_conflict_fail_raises_409(env: Env) -> None:
    async def scenario() -> None:
        client = make_client(env)
        drive_id = await _drive_id(client)
        children = client.drives.by_drive_id(drive_id).items.by_drive_item_id("root").children
        folder = DriveItem(
            name="Reports",
            folder=Folder(),
            additional_data={"@microsoft.graph.conflictBehavior": "fail"},
        )
        created = await children.post(folder)
        assert created.folder is not None
        with pytest.raises(ODataError) as err:
            await children.post(folder)
        assert err.value.response_status_code == 409
        assert err.value.error.code == "nameAlreadyExists"

    run(scenario())


@pytest.mark.slow
def test_429_retried_by_sdk_retry_handler(env: Env) -> None:
    env.admin.throttle(count=1, retry_after=1)

    async def scenario() -> str:
        client = make_client(env)
        drive = await client.me.drive.get()
        return drive.id

    assert run(scenario())
    statuses = [e["status"] for e in env.admin.requests_log() if e["path"] == "/v1.0/me/drive"]
    assert statuses == [429, 200]


def test_sdk_large_file_task_fragments_are_refused_by_emulator(env: Env) -> None:
    """msgraph-core 1.5.x LargeFileUploadTask is refused (bearer token to the uploadUrl; its
    fragments are also max_chunk_size + 1 bytes, not a multiple of 320 KiB)."""
    from msgraph_core.tasks.large_file_upload import LargeFileUploadTask

    data = os.urandom(UNIT * 3)

    async def scenario() -> None:
        client = make_client(env)
        drive_id = await _drive_id(client)
        session = await (
            client.drives.by_drive_id(drive_id)
            .items.by_drive_item_id("root:/sdk/task.bin:")
            .create_upload_session.post(CreateUploadSessionPostRequestBody())
        )
        import io

        task = LargeFileUploadTask(
            session, client.request_adapter, io.BytesIO(data), max_chunk_size=UNIT
        )
        try:
            await task.upload()
        except Exception:  # noqa: S110 - the SDK surfaces the refusal in different ways
            pass

    run(scenario())
    puts = [
        e
        for e in env.admin.requests_log()
        if e["path"].startswith("/_upload/") and e["method"] == "PUT"
    ]
    # Through the GraphRequestAdapter the task also attaches the bearer token: refused first.
    assert [(e["status"], e["had_authorization_header"]) for e in puts] == [(401, True)]
    assert env.admin.list_items(ALEX) == [
        i for i in env.admin.list_items(ALEX) if i["path"] != "/sdk/task.bin"
    ]


@pytest.mark.slow
def test_delta_enumeration_then_changes_only(env: Env) -> None:
    """The SDK's own delta request builders: nextLink to deltaLink, then only the changes."""
    for i in range(5):
        env.admin.modify_item(ALEX, f"Sync/f{i}.txt", b"x" * (i + 1))
    env.admin.modify_item(ALEX, "Outside/o.txt", b"o")

    async def drain(builder: Any) -> tuple[list[DriveItem], str, int]:
        page = await builder.get(request_configuration=top)
        items, pages = list(page.value), 1
        while page.odata_next_link:
            assert page.odata_delta_link is None
            page = await builder.with_url(page.odata_next_link).get()
            items += page.value
            pages += 1
        assert page.odata_delta_link
        return items, page.odata_delta_link, pages

    # Imported here: the module warns (deprecation) at import, which would fail collection.
    from msgraph.generated.drives.item.items.item.delta.delta_request_builder import (
        DeltaRequestBuilder,
    )

    top = DeltaRequestBuilder.DeltaRequestBuilderGetRequestConfiguration(
        query_parameters=DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(top=2)
    )

    async def scenario() -> tuple[list[DriveItem], int, list[DriveItem]]:
        client = make_client(env)
        drive_id = await _drive_id(client)
        items = client.drives.by_drive_id(drive_id).items
        folder = await items.by_drive_item_id("root:/Sync:").get()
        delta = items.by_drive_item_id(folder.id).delta
        first, link, pages = await drain(delta)
        env.admin.modify_item(ALEX, "Sync/f0.txt", b"edited in another device")
        env.admin.rename_item(ALEX, "Sync/f1.txt", "renamed.txt")
        env.admin.delete_item(ALEX, "Sync/f2.txt")
        changes = await delta.with_url(link).get()
        assert changes.odata_next_link is None and changes.odata_delta_link
        again = await delta.with_url(changes.odata_delta_link).get()
        assert again.value == []
        return first, pages, changes.value

    first, pages, changes = run(scenario())
    assert pages == 3 and [i.name for i in first][0] == "Sync"
    assert sorted(i.name for i in first[1:]) == [f"f{i}.txt" for i in range(5)]
    assert all(i.parent_reference.path is None for i in first)
    by_name = {i.name: i for i in changes}
    assert set(by_name) == {"Sync", "f0.txt", "renamed.txt", "f2.txt"}
    assert by_name["f0.txt"].size == len(b"edited in another device")
    assert by_name["f0.txt"].deleted is None and by_name["renamed.txt"].deleted is None
    assert by_name["f2.txt"].deleted is not None and by_name["f2.txt"].deleted.state == "deleted"
