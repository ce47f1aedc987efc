"""Channel behaviour over real WebSockets: public, private, encrypted, cache channels,
subscription_count, client events, multi-app isolation (channels.md; protocol.md §4, §7-8).
Presence channels are in test_websocket_presence.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from kanal.config import App
from tests.conftest import RunningServer, StartServer, make_app
from tests.wsclient import (
    Clients,
    WsClient,
    api_request,
    data_of,
    eventually,
    trigger,
)

OTHER = App(id="2", key="other-key", secret="other-secret", enable_client_messages=True)


@pytest.fixture
async def clients(start_server: StartServer) -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


async def next_channel_frame(client: WsClient, channel: str) -> dict[str, object]:
    return await client.expect(lambda f: f.get("channel") == channel)


# --- public channels ------------------------------------------------------------------------


async def test_public_subscribe_event_and_unsubscribe(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    await client.send("pusher:subscribe", {"auth": "", "channel": "news"})
    assert await client.next_frame() == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "news",
        "data": "{}",
    }
    await trigger(kanal_server, "news", "headline", '{"title": "hi"}')
    assert await client.next_frame() == {
        "event": "headline",
        "channel": "news",
        "data": '{"title": "hi"}',  # byte-for-byte, never re-encoded
    }
    await client.unsubscribe("news")
    await client.subscribe("sentinel")
    await trigger(kanal_server, ["news", "sentinel"], "after", "{}")
    frame = await client.next_frame()  # nothing on "news" any more, and no unsubscribe reply
    assert (frame["event"], frame["channel"]) == ("after", "sentinel")


async def test_subscribe_data_as_json_string(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.send("pusher:subscribe", json.dumps({"channel": "legacy"}))
    await client.expect_next("pusher_internal:subscription_succeeded", "legacy")


async def test_unsubscribing_an_unknown_channel_is_silent(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    await client.unsubscribe("never-subscribed")
    await client.send("pusher:ping")
    await client.expect_next("pusher:pong")


async def test_resubscribe_is_idempotent(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.subscribe("news")
    await client.subscribe("news")
    await trigger(kanal_server, "news", "once", "{}")
    await client.expect_next("once", "news")
    await client.send("pusher:ping")
    await client.expect_next("pusher:pong")  # delivered once, not twice


@pytest.mark.parametrize("channel", ["bad name", "#secret", "caf\u00e9", "x" * 165, ""])
async def test_invalid_channel_names_fail_without_closing(
    kanal_server: RunningServer, clients: Clients, channel: str
) -> None:
    client = await clients.connect(kanal_server)
    await client.send_subscribe(channel, signed=False)
    failure = await client.expect_next("pusher:subscription_error", channel)
    assert data_of(failure)["type"] == "InvalidChannel"
    assert data_of(failure)["status"] == 400
    error = await client.expect_next("pusher:error")
    assert error["data"]["code"] is None
    await client.subscribe("x" * 164)  # the longest valid name
    assert client.close_code is None


# --- private channels -----------------------------------------------------------------------


async def test_private_subscription_with_a_valid_signature(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    frame = await client.subscribe("private-orders")
    assert frame["data"] == "{}"
    await trigger(kanal_server, "private-orders", "shipped", '{"id":42}')
    assert (await client.expect("shipped"))["data"] == '{"id":42}'


async def test_private_subscription_with_a_bad_signature(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    await client.send_subscribe("private-orders", auth="app-key:" + "0" * 64)
    failure = await client.expect_next("pusher:subscription_error", "private-orders")
    assert isinstance(failure["data"], str)
    expected = (
        f"Invalid signature: Expected HMAC SHA256 hex digest of "
        f"{client.socket_id}:private-orders, but got {'0' * 64}"
    )
    assert data_of(failure) == {"type": "AuthError", "error": expected, "status": 401}
    error = await client.expect_next("pusher:error")
    assert error["data"] == {"code": None, "message": expected}
    assert not kanal_server.hub.is_subscribed(client.socket_id, "private-orders")
    await client.subscribe("private-orders")  # the connection is still usable


async def test_private_signature_for_another_socket_is_rejected(
    kanal_server: RunningServer, clients: Clients
) -> None:
    alice = await clients.connect(kanal_server)
    mallory = await clients.connect(kanal_server)
    await mallory.send_subscribe("private-a", auth=alice.channel_auth("private-a"))
    await mallory.expect_next("pusher:subscription_error", "private-a")


@pytest.mark.parametrize(("auth", "key"), [("other-key:abc", "other-key"), ("", "")])
async def test_private_subscription_with_a_wrong_key(
    kanal_server: RunningServer, clients: Clients, auth: str, key: str
) -> None:
    client = await clients.connect(kanal_server)
    await client.send_subscribe("private-orders", auth=auth)
    await client.expect_next("pusher:subscription_error", "private-orders")
    error = await client.expect_next("pusher:error")
    assert error["data"]["message"] == f"Invalid key in subscription auth data: '{key}'"


# --- encrypted channels ---------------------------------------------------------------------


async def test_encrypted_channel_subscribes_but_refuses_client_events(
    kanal_server: RunningServer, clients: Clients
) -> None:
    sender = await clients.connect(kanal_server)
    receiver = await clients.connect(kanal_server)
    for client in (sender, receiver):
        frame = await client.subscribe("private-encrypted-vault")
        assert frame["data"] == "{}"
    await sender.send("client-secret", {"x": 1}, channel="private-encrypted-vault")
    error = await sender.expect_error()
    assert error["data"]["message"] == (
        "Client event rejected - only supported on private and presence channels"
    )
    await receiver.send("pusher:ping")
    await receiver.expect_next("pusher:pong")  # nothing was relayed


# --- cache channels (channels.md §5) ----------------------------------------------------------


async def test_cache_miss_right_after_subscription_succeeded(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    await client.send_subscribe("cache-prices")
    await client.expect_next("pusher_internal:subscription_succeeded", "cache-prices")
    assert await client.next_frame() == {
        "event": "pusher:cache_miss",
        "channel": "cache-prices",
        "data": "{}",
    }


@pytest.mark.parametrize("channel", ["cache-prices", "private-cache-prices"])
async def test_cached_event_replayed_to_the_next_subscriber(
    kanal_server: RunningServer, clients: Clients, channel: str
) -> None:
    await trigger(kanal_server, channel, "price", '{"v":1}')  # nobody subscribed: still cached
    await trigger(kanal_server, channel, "price", '{"v":2}')  # the last one wins
    client = await clients.connect(kanal_server)
    await client.send_subscribe(channel)
    await client.expect_next("pusher_internal:subscription_succeeded", channel)
    assert await client.next_frame() == {"event": "price", "channel": channel, "data": '{"v":2}'}
    await client.send("pusher:ping")
    await client.expect_next("pusher:pong")  # exactly one replay, no cache_miss


async def test_client_events_are_not_cached(kanal_server: RunningServer, clients: Clients) -> None:
    sender = await clients.connect(kanal_server)
    await sender.subscribe("private-cache-chat")
    await sender.expect_next("pusher:cache_miss", "private-cache-chat")
    await sender.send("client-msg", {"t": 1}, channel="private-cache-chat")
    await sender.ping()
    late = await clients.connect(kanal_server)
    await late.subscribe("private-cache-chat")
    await late.expect_next("pusher:cache_miss", "private-cache-chat")


async def test_cache_expires_after_its_ttl(start_server: StartServer, clients: Clients) -> None:
    server = await start_server(apps=[make_app(cache_ttl=1)])
    await trigger(server, "cache-flash", "sale", '{"pct":50}')
    fresh = await clients.connect(server)
    await fresh.subscribe("cache-flash")
    await fresh.expect_next("sale", "cache-flash")

    async def expired() -> bool:
        response = await api_request(
            server, "GET", "/apps/1/channels/cache-flash", params={"info": "cache"}
        )
        return bool(response.json()["cache"] is None)

    await eventually(expired, within=5, what="cache expiry")
    late = await clients.connect(server)
    await late.subscribe("cache-flash")
    await late.expect_next("pusher:cache_miss", "cache-flash")


# --- subscription_count (channels.md §6) ------------------------------------------------------


async def expect_count(client: WsClient, channel: str, count: int) -> None:
    frame = await client.expect("pusher_internal:subscription_count", channel)
    assert isinstance(frame["data"], str)
    assert data_of(frame) == {"subscription_count": count}


async def test_subscription_count_goes_to_every_subscriber(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(enable_subscription_count=True)])
    a = await clients.connect(server)
    await a.send_subscribe("counted")
    await a.expect_next("pusher_internal:subscription_succeeded", "counted")
    await expect_count(a, "counted", 1)
    b = await clients.connect(server)
    await b.send_subscribe("counted")
    await b.expect_next("pusher_internal:subscription_succeeded", "counted")  # before the count
    await expect_count(b, "counted", 2)
    await expect_count(a, "counted", 2)
    await b.unsubscribe("counted")
    await expect_count(a, "counted", 1)
    c = await clients.connect(server)
    await c.subscribe("counted")
    await expect_count(a, "counted", 2)
    await c.close()  # a disconnect counts as leaving
    await expect_count(a, "counted", 1)


async def test_no_subscription_count_on_presence_or_encrypted_by_default(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(enable_subscription_count=True)])
    a = await clients.connect(server)
    await a.join_presence("presence-room", "1")
    await a.subscribe("private-encrypted-vault")
    b = await clients.connect(server)
    await b.join_presence("presence-room", "2")
    await b.subscribe("private-encrypted-vault")
    await a.subscribe("plain")
    await expect_count(a, "plain", 1)  # the first count a ever gets is the public channel's
    assert not [
        f
        for f in a.frames
        if f["event"] == "pusher_internal:subscription_count" and f["channel"] != "plain"
    ]


async def test_encrypted_subscription_count_when_opted_in(
    start_server: StartServer, clients: Clients
) -> None:
    app = make_app(enable_subscription_count=True, enable_encrypted_subscription_count=True)
    server = await start_server(apps=[app])
    a = await clients.connect(server)
    await a.subscribe("private-encrypted-vault")
    await expect_count(a, "private-encrypted-vault", 1)


async def test_no_subscription_count_when_the_app_disables_it(
    kanal_server: RunningServer, clients: Clients
) -> None:
    a = await clients.connect(kanal_server)
    await a.subscribe("plain")
    b = await clients.connect(kanal_server)
    await b.subscribe("plain")
    await a.send("pusher:ping")
    await a.expect_next("pusher:pong")


# --- client events (channels.md §8) -----------------------------------------------------------


async def pair(server: RunningServer, clients: Clients, channel: str) -> tuple[WsClient, WsClient]:
    a, b = await clients.connect(server), await clients.connect(server)
    for index, client in enumerate((a, b)):
        if channel.startswith("presence-"):
            await client.join_presence(channel, f"user-{index}")
        else:
            await client.subscribe(channel)
    return a, b


async def test_client_event_on_private_channel_is_relayed_not_echoed(
    kanal_server: RunningServer, clients: Clients
) -> None:
    a, b = await pair(kanal_server, clients, "private-chat")
    await a.send("client-typing", {"typing": True}, channel="private-chat")
    await a.send("client-raw", "already a string", channel="private-chat")
    assert await b.next_frame() == {
        "event": "client-typing",
        "channel": "private-chat",
        "data": '{"typing":true}',
    }  # no user_id on private channels
    assert await b.next_frame() == {
        "event": "client-raw",
        "channel": "private-chat",
        "data": "already a string",
    }
    await a.send("pusher:ping")
    await a.expect_next("pusher:pong")  # never echoed to the sender


async def test_client_event_on_presence_channel_carries_the_senders_user_id(
    kanal_server: RunningServer, clients: Clients
) -> None:
    a, b = await pair(kanal_server, clients, "presence-chat")
    await a.send("client-hi", {"user_id": "spoofed"}, channel="presence-chat")
    frame = await b.expect("client-hi", "presence-chat")
    assert frame["user_id"] == "user-0"
    assert frame["data"] == '{"user_id":"spoofed"}'


@pytest.mark.parametrize("channel", ["public-chat", "cache-chat"])
async def test_client_events_refused_on_public_and_cache_channels(
    kanal_server: RunningServer, clients: Clients, channel: str
) -> None:
    a, b = await pair(kanal_server, clients, channel)
    await a.send("client-x", {}, channel=channel)
    error = await a.expect_error()
    assert error["data"] == {
        "code": None,
        "message": "Client event rejected - only supported on private and presence channels",
    }
    await b.send("pusher:ping")
    await b.expect("pusher:pong")
    assert not [f for f in b.frames if f["event"] == "client-x"]


async def test_client_event_requires_a_subscription(
    kanal_server: RunningServer, clients: Clients
) -> None:
    _a, b = await pair(kanal_server, clients, "private-chat")
    outsider = await clients.connect(kanal_server)
    await outsider.send("client-x", {}, channel="private-chat")
    error = await outsider.expect_error()
    assert error["data"]["message"] == "Client event rejected - not subscribed to channel"
    await b.send("pusher:ping")
    await b.expect_next("pusher:pong")


async def test_client_events_refused_when_the_app_disables_them(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(enable_client_messages=False)])
    a, b = await pair(server, clients, "private-chat")
    await a.send("client-x", {}, channel="private-chat")
    error = await a.expect_error()
    assert error["data"]["message"] == (
        "Client event rejected - client events are not enabled for this app"
    )
    await b.send("pusher:ping")
    await b.expect_next("pusher:pong")


async def test_client_event_rate_limit_is_an_error_not_a_close(
    kanal_server: RunningServer, clients: Clients
) -> None:
    a, b = await pair(kanal_server, clients, "private-chat")
    for n in range(15):
        await a.send("client-burst", {"n": n}, channel="private-chat")
    await a.ping()
    errors = [f for f in a.skipped if f["event"] == "pusher:error"]
    assert errors, "no rate-limit error after 15 events in a burst"
    for error in errors:
        assert error["data"] == {"code": 4301, "message": "Client event rejected due to rate limit"}
    relayed = 15 - len(errors)
    assert 10 <= relayed < 15
    got = [data_of(await b.expect("client-burst"))["n"] for _ in range(relayed)]
    assert got[:10] == list(range(10))  # the first ten of a burst always pass
    assert a.close_code is None and b.close_code is None
    await b.send("pusher:ping")
    await b.expect_next("pusher:pong")


# --- multi-app isolation ------------------------------------------------------------------------


async def test_apps_are_isolated(start_server: StartServer, clients: Clients) -> None:
    server = await start_server(apps=[make_app(), OTHER])
    one = await clients.connect(server)
    two = await clients.connect(server, key=OTHER.key, secret=OTHER.secret)
    for client in (one, two):
        await client.subscribe("news")
        await client.subscribe("private-chat")
    roster_one = await one.join_presence("presence-room", "alice")
    roster_two = await two.join_presence("presence-room", "bob")
    assert roster_one["ids"] == ["alice"] and roster_two["ids"] == ["bob"]
    # An HTTP event of app 1 reaches only app 1.
    await trigger(server, "news", "for-one", "{}")
    await trigger(server, "news", "for-two", "{}", app_id="2", key=OTHER.key, secret=OTHER.secret)
    assert (await next_channel_frame(one, "news"))["event"] == "for-one"
    assert (await next_channel_frame(two, "news"))["event"] == "for-two"
    # Client events stay in their app.
    one_b = await clients.connect(server)
    await one_b.subscribe("private-chat")
    await one_b.send("client-x", {}, channel="private-chat")
    await one.expect("client-x", "private-chat")
    # Channel listings and presence users do not leak.
    await one.subscribe("only-in-one")
    listing = await api_request(
        server, "GET", "/apps/2/channels", key=OTHER.key, secret=OTHER.secret
    )
    assert set(listing.json()["channels"]) == {"news", "private-chat", "presence-room"}
    users = await api_request(
        server, "GET", "/apps/2/channels/presence-room/users", key=OTHER.key, secret=OTHER.secret
    )
    assert users.json() == {"users": [{"id": "bob"}]}
    await two.send("pusher:ping")
    await two.expect_next("pusher:pong")  # nothing from app 1 arrived


async def test_a_signature_of_one_app_is_not_valid_for_another(
    start_server: StartServer, clients: Clients
) -> None:
    server = await start_server(apps=[make_app(), OTHER])
    two = await clients.connect(server, key=OTHER.key, secret=OTHER.secret)
    from kanal.protocol.signatures import sign_channel

    forged = sign_channel(
        app_key=OTHER.key, app_secret="app-secret", socket_id=two.socket_id, channel="private-x"
    )
    await two.send_subscribe("private-x", auth=forged)
    await two.expect_next("pusher:subscription_error", "private-x")
