"""The HTTP API through the official Python SDK, observed by pusher-js subscribers (issue
item 7). Where the SDK cannot express a request (``info`` on trigger, oversize batch) it is
sent raw, signed exactly as the SDKs sign."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus

from tests.conftest import APP_ID, RunningServer

from .helpers import (
    call,
    connect,
    events,
    roundtrip,
    sdk,
    signed_request,
    subscription_count,
    wait_until,
)
from .jsclient import JsDriver


def member(user_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "user_info": {"name": user_id.title()}}


async def test_trigger_to_several_channels(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §3, channels.md §7: one trigger naming several channels delivers once per
    channel to each subscriber of each channel, and nowhere else."""
    api = sdk(kanal_server)
    await connect(js, kanal_server, "a")
    await connect(js, kanal_server, "b")
    for channel in ("ch-1", "ch-2", "private-ch-3"):
        await js.subscribe("a", channel)
    await js.subscribe("b", "private-ch-3")
    await js.subscribe("b", "ch-4")

    since = js.mark()
    assert await call(api.trigger, ["ch-1", "ch-2", "private-ch-3", "empty"], "multi", [1]) == {}
    await call(api.trigger, ["ch-1", "ch-4"], "sentinel", {})
    await js.wait_for(client="a", type="event", event="sentinel", since=since)
    await js.wait_for(client="b", type="event", event="sentinel", since=since)
    got_a = sorted(r["channel"] for r in events(js, "a", "multi", since=since))
    got_b = sorted(r["channel"] for r in events(js, "b", "multi", since=since))
    assert got_a == ["ch-1", "ch-2", "private-ch-3"]
    assert got_b == ["private-ch-3"]
    assert all(r["data"] == [1] for r in events(js, "a", "multi"))


async def test_socket_id_exclusion(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §3-§4, channels.md §7: the connection whose socket id (pusher-js's
    ``connection.socket_id``) is passed receives nothing, on every listed channel and in a
    batch; others receive the event."""
    api = sdk(kanal_server)
    a_id = await connect(js, kanal_server, "a")
    await connect(js, kanal_server, "b")
    for client in ("a", "b"):
        await js.subscribe(client, "room")
        await js.subscribe(client, "private-room")

    since = js.mark()
    await call(api.trigger, ["room", "private-room"], "excluded", {"x": 1}, a_id)
    await call(
        api.trigger_batch,
        [{"channel": "room", "name": "batch-excluded", "data": "1", "socket_id": a_id}],
    )
    await call(api.trigger, "room", "sentinel", {})
    for client in ("a", "b"):
        await js.wait_for(client=client, type="event", event="sentinel", since=since)
    assert len(events(js, "b", "excluded", since=since)) == 2
    assert len(events(js, "b", "batch-excluded", since=since)) == 1
    assert not events(js, "a", "excluded") and not events(js, "a", "batch-excluded")


async def test_trigger_with_info(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §3-§4: ``info=user_count,subscription_count`` on /events answers per
    channel (user_count only for presence: distinct users; subscription_count:
    connections); /batch_events answers per event, ``{}`` for events without info."""
    for client, user in (("a", "alice"), ("a2", "alice"), ("b", "bob")):
        await connect(js, kanal_server, client)
        await js.subscribe(client, "presence-room", presence=member(user))
    await js.subscribe("a", "news")
    await js.subscribe("b", "news")

    path = f"/apps/{APP_ID}/events"
    body = {
        "name": "with-info",
        "channels": ["presence-room", "news", "empty"],
        "data": "{}",
        "info": "user_count,subscription_count",
    }
    status, text = await signed_request(kanal_server, "POST", path, body=body)
    assert status == 200, text
    assert json.loads(text) == {
        "channels": {
            "presence-room": {"user_count": 2, "subscription_count": 3},
            "news": {"subscription_count": 2},
            "empty": {"subscription_count": 0},
        }
    }
    await js.wait_for(client="b", type="event", event="with-info", channel="news")

    batch = {
        "batch": [
            {"channel": "presence-room", "name": "b1", "data": "1", "info": "user_count"},
            {"channel": "news", "name": "b2", "data": "2"},
            {"channel": "news", "name": "b3", "data": "3", "info": "subscription_count"},
        ]
    }
    path = f"/apps/{APP_ID}/batch_events"
    status, text = await signed_request(kanal_server, "POST", path, body=batch)
    assert status == 200, text
    assert json.loads(text) == {"batch": [{"user_count": 2}, {}, {"subscription_count": 2}]}


async def test_trigger_batch(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §4: Python SDK ``trigger_batch`` publishes every event, in array order."""
    api = sdk(kanal_server)
    await connect(js, kanal_server, "a")
    await js.subscribe("a", "one")
    await js.subscribe("a", "private-two")
    batch = [
        {"channel": "one", "name": "e1", "data": {"i": 1}},
        {"channel": "private-two", "name": "e2", "data": {"i": 2}},
        {"channel": "one", "name": "e3", "data": "three"},
    ]
    assert await call(api.trigger_batch, batch) == {}
    await js.wait_for(client="a", type="event", event="e3")
    got = [
        (r["channel"], r["event"], r["data"])
        for r in js.records(client="a", type="event", event=lambda e: e in ("e1", "e2", "e3"))
    ]
    assert got == [("one", "e1", {"i": 1}), ("private-two", "e2", {"i": 2}), ("one", "e3", "three")]


async def test_channel_queries(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §5.1, §5.2, §6, users.md §3: channels_info / channel_info / users_info
    through the Python SDK match what the pusher-js clients did (occupied channels only,
    distinct presence users, connection counts, cache entry); #server-to-user channels are
    never listed; a channel reads unoccupied once its subscribers are gone."""
    api = sdk(kanal_server)
    for client in ("a", "a2", "b"):
        await connect(js, kanal_server, client)
    await js.signin("a", {"id": "alice"})
    for client, user in (("a", "alice"), ("a2", "alice"), ("b", "bob")):
        await js.subscribe(client, "presence-room", presence=member(user))
    await js.subscribe("a", "news")
    await js.subscribe("b", "news")
    await js.subscribe("b", "private-orders")
    await js.subscribe("b", "cache-prices")
    await call(api.trigger, "cache-prices", "price", {"v": 7})

    listing = await call(api.channels_info)
    assert listing == {
        "channels": {"presence-room": {}, "news": {}, "private-orders": {}, "cache-prices": {}}
    }
    presence = await call(api.channels_info, "presence-", ["user_count"])
    assert presence == {"channels": {"presence-room": {"user_count": 2}}}
    assert await call(api.channels_info, "private-") == {"channels": {"private-orders": {}}}

    info = await call(api.channel_info, "presence-room", ["user_count", "subscription_count"])
    assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
    assert await call(api.channel_info, "news", ["subscription_count"]) == {
        "occupied": True,
        "subscription_count": 2,
    }
    cache = await call(api.channel_info, "cache-prices", ["cache"])
    assert cache["occupied"] is True
    assert cache["cache"]["data"] == '{"v": 7}'
    assert 0 < cache["cache"]["ttl"] <= 1800
    assert await call(api.channel_info, "nobody-here") == {"occupied": False}

    users = await call(api.users_info, "presence-room")
    assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]
    # Attributes / endpoints that do not apply → 400 (http-api.md §5.1, §5.2, §6).
    with pytest.raises(PusherBadRequest):
        await call(api.users_info, "news")
    with pytest.raises(PusherBadRequest):
        await call(api.channel_info, "news", ["user_count"])
    with pytest.raises(PusherBadRequest):
        await call(api.channel_info, "news", ["cache"])
    with pytest.raises(PusherBadRequest):
        await call(api.channels_info, None, ["user_count"])
    with pytest.raises(PusherBadRequest):
        await call(api.channels_info, "private-", ["user_count"])

    # bob leaves: his channels empty out, the presence room shrinks to alice.
    await js.disconnect("b")
    await wait_until(lambda: subscription_count(api, "private-orders"), lambda n: n == 0)
    assert await call(api.channel_info, "private-orders") == {"occupied": False}
    users = await call(api.users_info, "presence-room")
    assert [u["id"] for u in users["users"]] == ["alice"]
    listing = await call(api.channels_info)
    assert set(listing["channels"]) == {"presence-room", "news"}


async def test_wrong_credentials(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §2.3-§2.4, §7: a wrong secret fails signature verification → 401, which
    the SDK raises as PusherBadAuth; nothing is published. An unknown app id → 404."""
    await connect(js, kanal_server, "a")
    await js.subscribe("a", "news")
    bad = sdk(kanal_server, secret="not-the-secret")
    with pytest.raises(PusherBadAuth):
        await call(bad.trigger, "news", "forged", {})
    with pytest.raises(PusherBadAuth):
        await call(bad.channels_info)
    with pytest.raises(PusherBadStatus, match=r"^404"):
        await call(sdk(kanal_server, app_id="999").trigger, "news", "nowhere", {})
    await roundtrip(js, "a")
    assert not events(js, "a", "forged")


async def test_payload_too_large(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §3-§4, limits.md §1: event data of 10240 bytes is accepted and delivered;
    10241 bytes → 413 (single trigger through the SDK; batch sent raw, since the SDK refuses
    such a batch itself) and nothing is published."""
    api = sdk(kanal_server)
    await connect(js, kanal_server, "a")
    await js.subscribe("a", "big")
    limit = "x" * 10240
    await call(api.trigger, "big", "fits", limit)
    got = await js.wait_for(client="a", type="event", event="fits")
    assert got["data"] == limit

    with pytest.raises(PusherBadStatus, match=r"^413"):
        await call(api.trigger, "big", "too-big", limit + "x")
    with pytest.raises(ValueError, match="Too much data"):  # client-side refusal
        await call(api.trigger_batch, [{"channel": "big", "name": "too-big", "data": limit + "x"}])
    batch = {
        "batch": [
            {"channel": "big", "name": "small", "data": "1"},
            {"channel": "big", "name": "too-big", "data": limit + "x"},
        ]
    }
    status, text = await signed_request(
        kanal_server, "POST", f"/apps/{APP_ID}/batch_events", body=batch
    )
    assert status == 413, text
    await call(api.trigger, "big", "sentinel", {})
    await js.wait_for(client="a", type="event", event="sentinel")
    assert not events(js, "a", "too-big") and not events(js, "a", "small")


async def test_rejected_publishes(kanal_server: RunningServer, js: JsDriver) -> None:
    """http-api.md §3-§4, limits.md §4: the SDK lets these through, the server answers 400 and
    publishes nothing: an event name in the reserved ``pusher:`` / ``pusher_internal:``
    namespaces (pusher-js would treat it as protocol), and a batch of more than 10 events."""
    api = sdk(kanal_server)
    await connect(js, kanal_server, "a")
    await js.subscribe("a", "news")
    for name in ("pusher:subscription_succeeded", "pusher_internal:member_added"):
        with pytest.raises(PusherBadRequest):
            await call(api.trigger, "news", name, {})
    batch = [{"channel": "news", "name": f"e{i}", "data": "1"} for i in range(11)]
    with pytest.raises(PusherBadRequest):
        await call(api.trigger_batch, batch)
    assert await call(api.trigger_batch, batch[:10]) == {}
    await js.wait_for(client="a", type="event", event="e9")
    assert not events(js, "a", "e10")
    forged = ("pusher:subscription_succeeded", "pusher_internal:member_added")
    assert not js.records(client="a", type="message", event=lambda e: e in forged)
