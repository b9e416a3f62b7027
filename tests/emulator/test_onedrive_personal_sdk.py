"""onedrive-personal-sdk (the library Home Assistant uses), unchanged, against the emulator.

The library has no base-URL option: it reads the module constant ``GRAPH_BASE_URL`` (imported
by name into ``clients.client`` and ``clients.large_file_upload``), so the test repoints those
two constants; no library code is modified. It validates ``quickXorHash`` itself.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import ClientSession, TCPConnector
from onedrive_personal_sdk import OneDriveClient
from onedrive_personal_sdk.clients import client as sdk_client
from onedrive_personal_sdk.clients import large_file_upload as sdk_upload
from onedrive_personal_sdk.clients.large_file_upload import LargeFileUploadClient
from onedrive_personal_sdk.const import ConflictBehavior
from onedrive_personal_sdk.exceptions import HashMismatchError, HttpRequestException
from onedrive_personal_sdk.models.upload import FileInfo

from .conftest import ALEX, CLIENT_ID, Env, run_async
from .test_graph import qxh

pytestmark = [
    pytest.mark.emulator,
    # aiohttp's advice to the library about 5 MiB bodies; not our concern here.
    pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning"),
]


@pytest.fixture
def sdk_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setattr(sdk_client, "GRAPH_BASE_URL", env.graph)
    monkeypatch.setattr(sdk_upload, "GRAPH_BASE_URL", env.graph)
    return env


@asynccontextmanager
async def sdk_session(env: Env) -> AsyncIterator[ClientSession]:
    """Yield the aiohttp session the SDK is handed, trusting the emulator's CA.

    aiohttp builds its default SSL context when it is imported, before the test session trusts
    the CA through SSL_CERT_FILE, so the context is handed over explicitly. werkzeug closes
    every connection after its answer, and aiohttp shuts those TLS connections down in the
    background: the short wait lets that finish before the event loop ends (aiohttp's
    "graceful shutdown" advice), instead of leaving unclosed transports behind.
    """
    context = env.ssl_context()
    try:
        async with ClientSession(connector=TCPConnector(ssl=context) if context else None) as s:
            yield s
    finally:
        if context:
            await asyncio.sleep(0.25)


async def _stream(data: bytes, piece: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


async def _upload(
    session: ClientSession,
    token,
    parent_id: str,
    name: str,
    data: bytes,
    conflict: ConflictBehavior,
    progress=None,
):
    info = FileInfo(
        name=name, size=len(data), folder_path_id=parent_id, content_stream=_stream(data)
    )
    return await LargeFileUploadClient.upload(
        token, info, session=session, conflict_behavior=conflict, progress_callback=progress
    )


def test_multi_fragment_upload_download_and_conflicts(sdk_env: Env) -> None:
    env = sdk_env
    access = env.admin.mint_token(ALEX, CLIENT_ID)["access_token"]
    data = os.urandom(13 * 1024 * 1024 + 12_345)

    async def token() -> str:
        return access

    async def scenario() -> None:
        async with sdk_session(env) as session:
            client = OneDriveClient(token, session)
            drive = await client.get_drive()
            assert drive.id
            approot = await client.get_approot()
            folder = await client.create_folder(approot.id, "backups")
            uploaded = await _upload(
                session, token, folder.id, "backup.tar", data, ConflictBehavior.FAIL
            )
            assert uploaded.size == len(data)
            assert uploaded.hashes.quick_xor_hash == qxh(data)
            stream = await client.download_drive_item(uploaded.id)
            assert await stream.read() == data
            with pytest.raises(HttpRequestException) as err:
                await _upload(
                    session, token, folder.id, "backup.tar", b"again", ConflictBehavior.FAIL
                )
            assert err.value.status_code == 409
            renamed = await _upload(
                session, token, folder.id, "backup.tar", b"again", ConflictBehavior.RENAME
            )
            assert renamed.name == "backup 1.tar"
            children = await client.list_drive_items(folder.id)
            assert sorted(c.name for c in children) == ["backup 1.tar", "backup.tar"]
            small = await client.upload_file(folder.id, "note.txt", b"hi")
            assert small.hashes.quick_xor_hash == qxh(b"hi")
            await client.delete_drive_item(small.id)

    run_async(scenario())
    fragments = [
        e
        for e in env.admin.requests_log()
        if e["path"].startswith("/_upload/") and e["method"] == "PUT"
    ]
    assert len([e for e in fragments if e["status"] == 202]) >= 2
    assert not any(e["had_authorization_header"] for e in fragments)
    assert any(i["path"].endswith("/backups/backup.tar") for i in env.admin.list_items(ALEX))


def test_lost_response_recovery_exposes_sdk_hash_bug(sdk_env: Env) -> None:
    """A fragment stored but its response lost: the retry meets 416, the SDK resumes from GET.

    The emulator ends with the right bytes and hash. onedrive-personal-sdk 0.2.0 then reports
    HashMismatchError: on its "416 -> next regular range" path it skips the ``else:`` branch
    that feeds the chunk to its own QuickXorHash (clients/large_file_upload.py). That is the
    library's bug, not the service's; drivesync must not copy that recovery code.
    """
    env = sdk_env
    access = env.admin.mint_token(ALEX, CLIENT_ID)["access_token"]
    data = os.urandom(11 * 1024 * 1024)

    async def token() -> str:
        return access

    async def scenario():
        async with sdk_session(env) as session:
            root = await OneDriveClient(token, session).get_drive_item("root")
            calls: list[int] = []

            def progress(sent: int) -> None:
                # The SDK treats any error before its first 202 as an expired session, so the
                # response of the *second* fragment is the one lost.
                if not calls:
                    env.admin.lose_response(1)
                calls.append(sent)

            return await _upload(
                session, token, root.id, "resumed.bin", data, ConflictBehavior.REPLACE, progress
            )

    with pytest.raises(HashMismatchError):
        run_async(scenario())
    fragments = [
        (e["status"], e["dropped"])
        for e in env.admin.requests_log()
        if e["path"].startswith("/_upload/")
    ]
    assert fragments == [(202, False), (0, True), (416, False), (200, False), (201, False)]
    (stored,) = env.admin.list_items(ALEX)
    assert stored["size"] == len(data) and stored["quickXorHash"] == qxh(data)
