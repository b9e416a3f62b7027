"""Microsoft's msgraph-sdk, unchanged, creates, renews and deletes a subscription."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.subscription import Subscription

from tests.fixtures_emulator import EmulatorCA

from .conftest import ALEX, Env, run_async
from .notify_receiver import Receiver, start_receiver
from .test_msgraph_sdk import make_client

pytestmark = [
    pytest.mark.emulator,
    pytest.mark.slow,  # the first msgraph import alone takes a few seconds
    pytest.mark.filterwarnings("ignore::DeprecationWarning:kiota_abstractions.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:kiota_http.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:msgraph_core.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:msgraph.*"),
]


@pytest.fixture
def receiver(emulator_ca: EmulatorCA | None) -> Iterator[Receiver]:
    """An HTTPS notification endpoint trusted through the emulator's notify_ca."""
    if emulator_ca is None:
        pytest.skip("notification URLs must be https: needs the emulator's TLS")
    r = start_receiver(emulator_ca)
    yield r
    assert r.server is not None
    r.server.shutdown()


def test_sdk_creates_renews_and_deletes_a_subscription(env: Env, receiver: Receiver) -> None:
    """POST, PATCH expirationDateTime, GET, DELETE through the SDK's own request builders."""
    now = datetime.now(UTC)

    async def scenario() -> None:
        client = make_client(env)
        created = await client.subscriptions.post(
            Subscription(
                change_type="updated",
                notification_url=f"{receiver.url}/hook",
                lifecycle_notification_url=f"{receiver.url}/life",
                resource="me/drive/root",
                expiration_date_time=now + timedelta(days=29),
                client_state="sdk-client-state",
            )
        )
        assert created is not None and created.id
        assert created.change_type == "updated"
        assert created.client_state == "sdk-client-state"
        later = now + timedelta(minutes=42000)
        renewed = await client.subscriptions.by_subscription_id(created.id).patch(
            Subscription(expiration_date_time=later)
        )
        assert renewed is not None and renewed.expiration_date_time is not None
        assert abs((renewed.expiration_date_time - later).total_seconds()) < 1
        listed = await client.subscriptions.get()
        assert listed is not None and [s.id for s in listed.value or []] == [created.id]
        too_long = Subscription(expiration_date_time=now + timedelta(minutes=43000))
        with pytest.raises(ODataError) as info:
            await client.subscriptions.by_subscription_id(created.id).patch(too_long)
        assert info.value.response_status_code == 400
        await client.subscriptions.by_subscription_id(created.id).delete()
        with pytest.raises(ODataError) as gone:
            await client.subscriptions.by_subscription_id(created.id).get()
        assert gone.value.response_status_code == 404

    run_async(scenario())
    assert [h.path for h in receiver.hits if "validationToken" in h.query] == ["/hook", "/life"]
    assert env.admin.list_subscriptions() == []
    env.admin.modify_item(ALEX, "/drivesync/a.txt", b"x")  # nobody is subscribed any more
