"""The Channels API service (kanal.service) called directly, with no HTTP in the path: what the
embedded app, the in-process API and the console rely on. Real node, real WebSocket clients."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from kanal.protocol import api
from kanal.protocol.errors import ApiError
from kanal.service import ChannelsApi, RateLimiter
from tests.conftest import RunningServer, make_app
from tests.wsclient import Clients, data_of


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


def service_of(server: RunningServer) -> ChannelsApi:
    return server.server.service


async def test_trigger_reaches_subscribers_and_answers_info(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    await client.subscribe("orders")
    service, app = service_of(kanal_server), make_app()
    event = api.trigger_event(
        app,
        name="shipped",
        channels=["orders", "empty"],
        data='{"id":1}',
        info=["subscription_count"],
    )
    answer = await service.trigger(app, event)
    assert answer == {
        "channels": {"orders": {"subscription_count": 1}, "empty": {"subscription_count": 0}}
    }
    frame = await client.expect_next("shipped", "orders")
    assert data_of(frame) == {"id": 1}
    plain = api.trigger_event(app, name="again", channels=["orders"], data="x")
    assert await service.trigger(app, plain) == {}


async def test_trigger_excludes_the_given_socket_id(
    kanal_server: RunningServer, clients: Clients
) -> None:
    sender, other = await clients.connect(kanal_server), await clients.connect(kanal_server)
    for client in (sender, other):
        await client.subscribe("room")
    app = make_app()
    event = api.trigger_event(
        app, name="said", channels=["room"], data="hi", socket_id=sender.socket_id
    )
    await service_of(kanal_server).trigger(app, event)
    await other.expect_next("said", "room")
    await sender.assert_silent("said")


async def test_batch_publishes_in_order_with_per_event_info(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    await client.subscribe("a")
    app = make_app()
    batch = api.parse_batch(
        b'{"batch":[{"channel":"a","name":"one","data":"1","info":"subscription_count"},'
        b'{"channel":"b","name":"two","data":"2"}]}',
        app,
    )
    answer = await service_of(kanal_server).trigger_batch(app, batch)
    assert answer == {"batch": [{"subscription_count": 1}, {}]}
    await client.expect_next("one", "a")


async def test_channels_channel_and_users(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.join_presence("presence-room", "42", {"name": "Ann"})
    await client.subscribe("news")
    service, app = service_of(kanal_server), make_app()
    listed = await service.channels(app, api.parse_channels_query({"info": "subscription_count"}))
    assert listed == {
        "channels": {"news": {"subscription_count": 1}, "presence-room": {"subscription_count": 1}}
    }
    query = api.parse_channel_query("presence-room", {"info": "user_count,subscription_count"}, app)
    assert await service.channel(app, query) == {
        "occupied": True,
        "user_count": 1,
        "subscription_count": 1,
    }
    assert await service.users(app, "presence-room") == {"users": [{"id": "42"}]}


async def test_send_to_user_and_terminate(kanal_server: RunningServer, clients: Clients) -> None:
    app = dataclasses.replace(make_app(), enable_user_authentication=True)
    client = await clients.connect(kanal_server)
    await client.signin({"id": "u7"})
    service = service_of(kanal_server)
    await service.send_to_user(app, "u7", "note", '{"n":1}')
    frame = await client.expect_next("note", "#server-to-user-u7")
    assert data_of(frame) == {"n": 1}
    assert await service.terminate_user_connections(app, "u7") == {}
    assert await client.expect_closed() is not None


async def test_values_are_validated_like_http_bodies(kanal_server: RunningServer) -> None:
    service, app = service_of(kanal_server), make_app(max_event_payload_bytes=10)
    with pytest.raises(ApiError) as too_big:
        api.trigger_event(app, name="e", channels=["c"], data="x" * 11)
    assert too_big.value.status == 413
    with pytest.raises(ApiError) as reserved:
        api.trigger_event(app, name="pusher:x", channels=["c"], data="")
    assert reserved.value.status == 400
    with pytest.raises(ApiError) as bad_user:
        await service.send_to_user(app, "bad user", "e", "")
    assert bad_user.value.status == 400


async def test_disabled_app_and_rate_limit(kanal_server: RunningServer) -> None:
    service = service_of(kanal_server)
    disabled = make_app(enabled=False)
    event = api.trigger_event(disabled, name="e", channels=["c"], data="")
    with pytest.raises(ApiError) as refused:
        await service.trigger(disabled, event)
    assert refused.value.status == 403
    limited = make_app(id="2", max_read_requests_per_second=1)
    query = api.parse_channels_query({})
    await service.channels(limited, query)
    with pytest.raises(ApiError) as throttled:
        await service.channels(limited, query)
    assert throttled.value.status == 429


def test_rate_limiter_refills_at_the_rate() -> None:
    limiter = RateLimiter()
    assert [limiter.allow("k", 2, 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("k", 2, 0.5)  # half a second buys one token back
    assert not limiter.allow("k", 2, 0.5)
    assert limiter.allow("k", 0, 0.5)  # 0 = no limit
