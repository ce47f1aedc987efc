"""Channel types with pusher-js subscribers and the Python SDK publishing: public, private,
encrypted, cache variants, subscription_count, naming rules and authorization failures
(issue item 4; presence is in test_presence.py, #server-to-user in test_users.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import RunningServer, StartServer, make_app

from .helpers import MASTER_KEY, call, connect, events, frames_in, roundtrip, sdk, wait_until
from .jsclient import JsDriver, Record


async def test_public_and_private_delivery(
    kanal_server: RunningServer, js: JsDriver, client_transport: str
) -> None:
    """channels.md §1, §3.2, §7, protocol.md §4.11: a public channel needs no auth, a private
    one a valid signature; Python SDK triggers reach both with the data string intact."""
    api = sdk(kanal_server)
    await connect(js, kanal_server, "a", frames=True)
    ok = await js.subscribe("a", "news")
    assert ok["data"] == {}
    await js.subscribe("a", "private-orders")
    assert [r["channel"] for r in js.records(client="a", type="auth_request")] == ["private-orders"]

    await call(api.trigger, "news", "headline", {"title": "hi", "n": [1, 2]})
    await call(api.trigger, "private-orders", "order-shipped", "plain string")
    got = await js.wait_for(client="a", type="event", event="headline")
    assert got["channel"] == "news" and got["data"] == {"title": "hi", "n": [1, 2]}
    got = await js.wait_for(client="a", type="event", event="order-shipped")
    assert got["channel"] == "private-orders" and got["data"] == "plain string"
    # Forwarded byte-for-byte as the SDK JSON-encoded it (Python spacing).
    [frame] = frames_in(js, "a", "headline")
    assert frame == {
        "event": "headline",
        "channel": "news",
        "data": '{"title": "hi", "n": [1, 2]}',
    }


async def test_private_encrypted(kanal_server: RunningServer, js: JsDriver) -> None:
    """encryption.md §1-§5: the Python SDK encrypts with the master key, the server forwards
    the ciphertext untouched, pusher-js (given the shared secret by its auth handler)
    decrypts it."""
    api = sdk(kanal_server, encryption_master_key_base64=MASTER_KEY)
    channel = "private-encrypted-vault"
    await connect(js, kanal_server, "a", frames=True, master_key=MASTER_KEY)
    await js.subscribe("a", channel)

    await call(api.trigger, channel, "secret", {"message": "hello world"})
    got = await js.wait_for(client="a", type="event", event="secret")
    assert got["data"] == {"message": "hello world"}
    [frame] = frames_in(js, "a", "secret")
    assert isinstance(frame["data"], str) and "hello world" not in frame["data"]
    assert set(json.loads(frame["data"])) == {"nonce", "ciphertext"}


CACHE_CHANNELS = [
    "cache-prices",
    "private-cache-prices",
    "presence-cache-prices",
    "private-encrypted-cache-prices",
]


@pytest.mark.parametrize("channel", CACHE_CHANNELS)
async def test_cache_channels(kanal_server: RunningServer, js: JsDriver, channel: str) -> None:
    """channels.md §5, protocol.md §4.9, §8.2: the first subscriber of an empty cache channel
    gets ``pusher:cache_miss`` right after subscription_succeeded; after a Python SDK trigger
    a new subscriber gets the last event replayed (decrypted by pusher-js on the encrypted
    variant), and no cache_miss."""
    api = sdk(kanal_server, encryption_master_key_base64=MASTER_KEY)
    opts: dict[str, Any] = {"master_key": MASTER_KEY}
    for client in ("a", "b"):
        await connect(js, kanal_server, client, frames=True, **opts)
    presence = channel.startswith("presence-")

    def member(user: str) -> dict[str, Any] | None:
        return {"user_id": user, "user_info": None} if presence else None

    ok = await js.subscribe("a", channel, presence=member("u-a"))
    miss = await js.wait_for(client="a", type="event", event="pusher:cache_miss")
    assert miss["channel"] == channel and miss["seq"] > ok["seq"]
    # data exactly "{}" (pusher-websocket-java on encrypted channels, encryption.md §4)
    assert [f["data"] for f in frames_in(js, "a", "pusher:cache_miss")] == ["{}"]

    await call(api.trigger, channel, "price", {"v": 1})
    await call(api.trigger, channel, "price", {"v": 2})  # replaces the entry
    await js.wait_for(client="a", type="event", event="price", data={"v": 2})

    ok = await js.subscribe("b", channel, presence=member("u-b"))
    replay = await js.wait_for(client="b", type="event", event="price")
    assert replay["channel"] == channel and replay["data"] == {"v": 2}
    assert replay["seq"] > ok["seq"]
    await roundtrip(js, "b")
    assert len(events(js, "b", "price")) == 1
    assert not events(js, "b", "pusher:cache_miss")


async def test_subscription_count(start_server: StartServer, js: JsDriver) -> None:
    """channels.md §6, protocol.md §4.7: with enable_subscription_count every subscriber of a
    non-presence channel gets ``pusher:subscription_count`` with the number of subscribed
    connections as clients join, unsubscribe and disconnect; presence channels get none."""
    server = await start_server(apps=[make_app(enable_subscription_count=True)])
    for client in ("a", "b", "c"):
        await connect(js, server, client)

    async def counts(client: str, value: int, since: int) -> None:
        rec = await js.wait_for(
            client=client, type="event", event="pusher:subscription_count", since=since,
            channel="counted", data={"subscription_count": value},
        )  # fmt: skip
        assert rec["data"] == {"subscription_count": value}

    since = js.mark()
    ok = await js.subscribe("a", "counted")
    await counts("a", 1, since)
    first = events(js, "a", "pusher:subscription_count", since=since)[0]
    assert first["seq"] > ok["seq"], "subscription_succeeded comes first (protocol.md §8)"

    since = js.mark()
    await js.subscribe("b", "counted")
    await counts("a", 2, since)
    await counts("b", 2, since)

    since = js.mark()
    await js.subscribe("c", "counted")
    for client in ("a", "b", "c"):
        await counts(client, 3, since)
    state = await js.command("channel_state", client="a", channel="counted")
    assert state["subscriptionCount"] == 3

    since = js.mark()
    await js.unsubscribe("c", "counted")
    await counts("a", 2, since)
    await counts("b", 2, since)

    since = js.mark()
    await js.disconnect("b")
    await counts("a", 1, since)

    # Never sent on presence channels (members events instead), nor by default on
    # private-encrypted- ones (encryption.md §4).
    await js.subscribe("a", "presence-room", presence={"user_id": "1", "user_info": None})
    await js.subscribe("c", "presence-room", presence={"user_id": "2", "user_info": None})
    await connect(js, server, "e1", master_key=MASTER_KEY)
    await connect(js, server, "e2", master_key=MASTER_KEY)
    await js.subscribe("e1", "private-encrypted-counted")
    await js.subscribe("e2", "private-encrypted-counted")
    for client in ("a", "c", "e1", "e2"):
        await roundtrip(js, client)
    assert not js.records(type="event", event="pusher:subscription_count", channel="presence-room")
    assert not js.records(
        type="event", event="pusher:subscription_count", channel="private-encrypted-counted"
    )


async def test_channel_name_rules(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §2, §3.4, limits.md §3: names outside ``[-a-zA-Z0-9_=@,.;]`` or longer than
    164 characters fail with ``pusher:subscription_error`` (InvalidChannel, 400) followed by
    ``pusher:error`` code null; the connection stays usable and 164 characters is fine."""
    await connect(js, kanal_server, "a", frames=True)
    ok_name = "private-" + "x" * (164 - len("private-"))
    for bad in ("bad channel", "star*", "caf\u00e9", "x" * 165, ok_name + "x"):
        since = js.mark()
        await js.subscribe("a", bad, expect_error=True)
        err = await js.wait_for(client="a", type="subscription_error", channel=bad, since=since)
        assert err["status"] == 400, err
        assert err["error"]["type"] == "InvalidChannel", err
        msg = await js.wait_for(client="a", type="message", event="pusher:error", since=since)
        assert msg["data"]["code"] is None
        assert msg["seq"] > err["seq"], "channel-scoped error comes first (§3.4)"
    # On the wire the channel-scoped error's data is a JSON string (protocol.md §2.1, §4.8).
    wire = frames_in(js, "a", "pusher:subscription_error")
    assert len(wire) == 5 and all(isinstance(f["data"], str) for f in wire)
    await js.subscribe("a", ok_name)
    await js.subscribe("a", "-_=@,.;AZaz09")
    await roundtrip(js, "a")


async def test_refusing_auth_endpoint(kanal_server: RunningServer, js: JsDriver) -> None:
    """auth.md §4.1: an auth endpoint answering 403 makes pusher-js raise
    ``pusher:subscription_error`` with status 403 and never send the subscribe; other
    channels on the same connection are unaffected."""
    await connect(js, kanal_server, "a", frames=True)
    err = await js.subscribe("a", "private-denied", auth_error=403, expect_error=True)
    assert err["type"] == "subscription_error" and err["status"] == 403
    assert err["error"]["type"] == "AuthError"
    sent = [json.loads(r["data"]) for r in js.records(client="a", type="frame", dir="out")]
    assert not [f for f in sent if f.get("event") == "pusher:subscribe"]
    await js.subscribe("a", "private-allowed")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"auth_secret": "wrong-secret"}, "Invalid signature"),
        ({"auth_key": "wrong-key"}, "Invalid key"),
    ],
)
async def test_bad_channel_signature(
    kanal_server: RunningServer, js: JsDriver, override: dict[str, Any], message: str
) -> None:
    """auth.md §3.1, channels.md §3.4: a subscription signed with the wrong secret (or carrying
    the wrong key) is refused by the server: ``pusher:subscription_error`` (AuthError, 401)
    then ``pusher:error`` code null with the hosted text; the connection stays open."""
    await connect(js, kanal_server, "a")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("private-x", {}),
        ("presence-x", {"presence": {"user_id": "1", "user_info": None}}),
    ]
    for channel, extra in cases:
        since = js.mark()
        await js.subscribe("a", channel, expect_error=True, **override, **extra)
        err = await js.wait_for(client="a", type="subscription_error", channel=channel)
        assert err["status"] == 401 and err["error"]["type"] == "AuthError", err
        rec = await js.wait_for(client="a", type="message", event="pusher:error", since=since)
        assert rec["data"]["code"] is None
        assert rec["data"]["message"].startswith(message), rec
    state = await js.command("channel_state", client="a", channel="private-x")
    assert state["subscribed"] is False
    await js.subscribe("a", "private-y")  # correctly signed: fine


async def test_cache_expiry_and_cold_publish(start_server: StartServer, js: JsDriver) -> None:
    """channels.md §5, http-api.md §5.2: an event published while nobody is subscribed is
    still cached and replayed to the first subscriber; after ``cache_ttl`` the entry is gone
    (``cache: null``) and a new subscriber gets ``pusher:cache_miss``."""
    server = await start_server(apps=[make_app(cache_ttl=1)])
    api = sdk(server)
    await call(api.trigger, "cache-cold", "snapshot", {"v": 1})
    await connect(js, server, "a")
    await js.subscribe("a", "cache-cold")
    replay = await js.wait_for(client="a", type="event", event="snapshot")
    assert replay["data"] == {"v": 1}

    info = await wait_until(
        lambda: call(api.channel_info, "cache-cold", ["cache"]),
        lambda i: i.get("cache") is None,
    )
    assert info == {"occupied": True, "cache": None}
    await connect(js, server, "b")
    await js.subscribe("b", "cache-cold")
    await js.wait_for(client="b", type="event", event="pusher:cache_miss")
    await roundtrip(js, "b")
    assert not events(js, "b", "snapshot")


async def test_subscription_count_throttled_above_100(
    start_server: StartServer, js: JsDriver
) -> None:
    """channels.md §6 (throttling): above 100 subscribers the count goes out at most once
    every 5 s while subscriptions keep changing, and the last count of a window is still
    delivered."""
    server = await start_server(apps=[make_app(enable_subscription_count=True)])
    names = [f"c{i:03d}" for i in range(105)]
    await asyncio.gather(*(connect(js, server, name) for name in names))
    await asyncio.gather(*(js.subscribe(name, "crowd") for name in names[:100]))

    def count_of(rec: Record) -> int:
        return int(rec["data"]["subscription_count"])

    await js.wait_for(client="c000", type="event", event="pusher:subscription_count",
                      data={"subscription_count": 100})  # fmt: skip
    since = js.mark()
    for name in names[100:]:  # 101 … 105 in quick succession
        await js.subscribe(name, "crowd")
    last = await js.wait_for(
        client="c000", type="event", event="pusher:subscription_count", since=since,
        data={"subscription_count": 105}, timeout=8.0,
    )  # fmt: skip
    seen = [count_of(r) for r in events(js, "c000", "pusher:subscription_count", since=since)]
    assert seen[-1] == 105 and len(seen) <= 2, seen
    if len(seen) == 2:  # the first change may go out at once, the rest waits for the window
        first = events(js, "c000", "pusher:subscription_count", since=since)[0]
        assert count_of(first) == 101 and last["seq"] > first["seq"]
    state = await js.command("channel_state", client="c104", channel="crowd")
    assert state["subscriptionCount"] == 105


async def test_cache_order_and_excluded_publish(start_server: StartServer, js: JsDriver) -> None:
    """channels.md §3.1 step 8, §5, protocol.md §8: on a cache channel the joiner sees
    subscription_succeeded, then the cache answer, then subscription_count; an HTTP event
    whose ``socket_id`` excluded the only subscriber is still what gets cached."""
    server = await start_server(apps=[make_app(enable_subscription_count=True)])
    api = sdk(server)
    a_id = await connect(js, server, "a")
    await connect(js, server, "b")

    def order(client: str) -> list[str]:
        return [r["event"] for r in js.records(client=client, type="event")]

    await js.subscribe("a", "cache-x")
    await js.wait_for(client="a", type="event", event="pusher:subscription_count")
    assert order("a") == [
        "pusher:subscription_succeeded",
        "pusher:cache_miss",
        "pusher:subscription_count",
    ]
    await call(api.trigger, "cache-x", "snapshot", {"v": 1}, a_id)
    await js.subscribe("b", "cache-x")
    await js.wait_for(client="b", type="event", event="pusher:subscription_count")
    assert order("b") == ["pusher:subscription_succeeded", "snapshot", "pusher:subscription_count"]
    await roundtrip(js, "a")
    assert "snapshot" not in order("a")
