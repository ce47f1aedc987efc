"""kanal.asgi's in-process API (Realtime): the HTTP API's rules and answers without HTTP,
from async code on the node's loop and from other threads; and the own-port mode."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from kanal.asgi import create_app
from kanal.config import Config, ServerSettings
from kanal.protocol.errors import ApiError
from tests.asgi_server import AsgiNode
from tests.conftest import RunningServer, make_app
from tests.wsclient import Clients, data_of

CONFIG = Config(server=ServerSettings(port=0), apps=(make_app(),))


@pytest.fixture
async def node() -> AsyncIterator[tuple[AsgiNode, RunningServer]]:
    embedded = AsgiNode(CONFIG)
    port = await embedded.start()
    try:
        yield embedded, RunningServer(embedded.app.server, port)
    finally:
        await embedded.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


async def test_trigger_encodes_data_once_and_answers_like_the_api(
    node: tuple[AsgiNode, RunningServer], clients: Clients
) -> None:
    embedded, server = node
    client = await clients.connect(server)
    await client.subscribe("orders")
    realtime = embedded.app.realtime
    answer = await realtime.trigger("orders", "shipped", {"id": 42}, info=["subscription_count"])
    assert answer == {"channels": {"orders": {"subscription_count": 1}}}
    assert data_of(await client.expect_next("shipped", "orders")) == {"id": 42}
    await realtime.trigger(["orders"], "raw", '{"as":"is"}')
    frame = await client.expect_next("raw", "orders")
    assert frame["data"] == '{"as":"is"}'  # a str is sent as it is
    assert await realtime.channel_info("orders", "subscription_count") == {
        "occupied": True,
        "subscription_count": 1,
    }
    assert await realtime.channels() == {"channels": {"orders": {}}}


async def test_errors_carry_the_api_status(node: tuple[AsgiNode, RunningServer]) -> None:
    realtime = node[0].app.realtime
    with pytest.raises(ApiError) as reserved:
        await realtime.trigger("c", "pusher:x", "")
    assert reserved.value.status == 400
    with pytest.raises(ApiError) as unknown:
        await realtime.trigger("c", "e", "", app_id="404")
    assert unknown.value.status == 404
    with pytest.raises(ApiError) as not_json:
        await realtime.trigger("c", "e", object())
    assert not_json.value.status == 400
    with pytest.raises(ApiError) as batch:
        await realtime.trigger_batch([{"channel": "c", "name": "e", "data": {"a": 1}}, {}])
    assert batch.value.status == 400 and "batch[1]" in str(batch.value)


async def test_sync_calls_from_another_thread(
    node: tuple[AsgiNode, RunningServer], clients: Clients
) -> None:
    embedded, server = node
    client = await clients.connect(server)
    await client.subscribe("news")
    sync = embedded.app.realtime.sync
    answer = await asyncio.to_thread(
        sync.trigger, "news", "flash", {"n": 1}, None, "subscription_count"
    )
    assert answer == {"channels": {"news": {"subscription_count": 1}}}
    assert data_of(await client.expect_next("flash", "news")) == {"n": 1}
    batch = [{"channel": "news", "name": "b", "data": [1, 2]}]
    assert await asyncio.to_thread(sync.trigger_batch, batch) == {}
    assert data_of(await client.expect_next("b", "news")) == [1, 2]
    with pytest.raises(RuntimeError, match="await"):
        sync.channels()  # on the node's own loop: would deadlock, so it refuses


async def test_sync_before_start_says_so() -> None:
    realtime = create_app(CONFIG).realtime
    with pytest.raises(RuntimeError, match="not running"):
        realtime.sync.channels()


async def test_own_port_serves_both_transports(clients: Clients) -> None:
    config = dataclasses.replace(CONFIG, server=ServerSettings(host="127.0.0.1", port=0))
    embedded = AsgiNode(config, own_port=True)
    asgi_port = await embedded.start()
    try:
        own_port = embedded.app.port
        assert own_port is not None and own_port != asgi_port
        fast = await clients.connect(RunningServer(embedded.app.server, own_port))
        mounted = await clients.connect(RunningServer(embedded.app.server, asgi_port))
        for client in (fast, mounted):
            await client.subscribe("both")
        await embedded.app.realtime.trigger("both", "hello", {"long": "x" * 300})
        for client in (fast, mounted):
            assert data_of(await client.expect_next("hello", "both")) == {"long": "x" * 300}
    finally:
        await embedded.stop()
    assert embedded.app.port is None


# --- signing for the app's own auth endpoints -------------------------------------------------


def test_channel_authorization_matches_the_official_sdk_and_the_vectors() -> None:
    import pusher

    realtime = create_app(CONFIG).realtime
    sdk = pusher.Pusher(app_id="1", key="app-key", secret="app-secret")
    ours = realtime.authorize_channel("1234.1234", "private-orders")
    assert ours == sdk.authenticate(channel="private-orders", socket_id="1234.1234")
    # the shared secret of the encryption vector (docs/reference/encryption.md §4)
    master_key = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU="
    encrypted = realtime.authorize_channel(
        "1234.1234", "private-encrypted-foobar", encryption_master_key_base64=master_key
    )
    assert encrypted["shared_secret"] == "c2G7lNZEj5cOEFL4N/dWYD5uzMjAvZicXVXJl73uE2Y="
    sdk_encrypted = pusher.Pusher(
        app_id="1", key="app-key", secret="app-secret", encryption_master_key_base64=master_key
    )
    expected = sdk_encrypted.authenticate("private-encrypted-foobar", "1234.1234")
    # pusher 3.3.4 returns shared_secret as bytes; pusher-js reads the base64 text
    assert encrypted == {**expected, "shared_secret": expected["shared_secret"].decode()}


def test_authorization_refuses_what_pusher_js_could_not_use() -> None:
    realtime = create_app(CONFIG).realtime
    for socket_id, channel, user_id in [
        ("nope", "private-x", None),
        ("1.2", "public-x", None),  # a public channel needs no authorization
        ("1.2", "presence-room", None),  # presence needs a user_id
        ("1.2", "private-encrypted-x", None),  # needs the master key
        ("1.2", "bad channel", None),
    ]:
        with pytest.raises(ApiError) as refused:
            realtime.authorize_channel(socket_id, channel, user_id)
        assert refused.value.status == 400
    with pytest.raises(ApiError):
        realtime.authenticate_user("1.2", {"name": "no id"})


async def test_signed_presence_and_signin_are_accepted_by_kanal(
    node: tuple[AsgiNode, RunningServer], clients: Clients
) -> None:
    embedded, server = node
    realtime = embedded.app.realtime
    client = await clients.connect(server)
    auth = realtime.authorize_channel(client.socket_id, "presence-room", "7", {"name": "Ann"})
    await client.send("pusher:subscribe", {"channel": "presence-room", **auth})
    succeeded = await client.expect_next("pusher_internal:subscription_succeeded", "presence-room")
    assert data_of(succeeded)["presence"]["hash"] == {"7": {"name": "Ann"}}
    signin = realtime.authenticate_user(client.socket_id, {"id": "7"})
    await client.send("pusher:signin", signin)
    assert (await client.expect_next("pusher:signin_success"))["data"]["user_data"] == '{"id":"7"}'
