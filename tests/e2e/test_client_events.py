"""Client events sent by pusher-js (``channel.trigger``) and relayed by kanal (issue item 5)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import RunningServer, StartServer, make_app

from .helpers import MASTER_KEY, call, closes, connect, events, frames_in, roundtrip, sdk
from .jsclient import JsDriver, Record


def member(user_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "user_info": None}


async def _error_after(js: JsDriver, client: str, since: int) -> Record:
    rec = await js.wait_for(client=client, type="message", event="pusher:error", since=since)
    assert isinstance(rec["data"]["message"], str) and rec["data"]["message"]
    return rec


async def test_private_relay_not_echoed(
    kanal_server: RunningServer, js: JsDriver, client_transport: str
) -> None:
    """channels.md §8.1-§8.2, protocol.md §2.1 rule 4, §4.12: a client event on a private
    channel reaches every other subscriber (data as a JSON string, no user_id), never the
    sender; it also works on private-cache- channels and is never cached there."""
    api = sdk(kanal_server)
    for client in ("a", "b", "c"):
        await connect(js, kanal_server, client, frames=True)
        await js.subscribe(client, "private-chat")

    since = js.mark()
    assert await js.trigger("a", "private-chat", "client-typing", {"typing": True})
    for client in ("b", "c"):
        got = await js.wait_for(client=client, type="event", event="client-typing", since=since)
        assert got["data"] == {"typing": True} and got["user_id"] is None
    [frame] = frames_in(js, "b", "client-typing")
    assert frame == {"event": "client-typing", "channel": "private-chat", "data": '{"typing":true}'}
    # The sender: an HTTP event published after the relay arrives, the echo never did.
    await call(api.trigger, "private-chat", "sentinel", {})
    await js.wait_for(client="a", type="event", event="sentinel", since=since)
    assert not events(js, "a", "client-typing")

    # private-cache-: relayed, but not cached (the next subscriber gets cache_miss).
    await js.subscribe("a", "private-cache-chat")
    await js.subscribe("b", "private-cache-chat")
    since = js.mark()
    assert await js.trigger("a", "private-cache-chat", "client-note", "hello")
    await js.wait_for(client="b", type="event", event="client-note", data="hello", since=since)
    await js.subscribe("c", "private-cache-chat")
    await js.wait_for(client="c", type="event", event="pusher:cache_miss", since=since)
    await roundtrip(js, "c")
    assert not events(js, "c", "client-note", channel="private-cache-chat")


async def test_presence_relay_carries_user_id(
    kanal_server: RunningServer, js: JsDriver, client_transport: str
) -> None:
    """channels.md §8.2: on presence channels the relayed event carries the sender's member
    ``user_id`` (pusher-js ``metadata.user_id``), whatever the payload claims; the sender's
    other connection (same user) receives it, the sending connection does not."""
    for client in ("a", "a2", "b"):
        await connect(js, kanal_server, client)
    await js.subscribe("a", "presence-room", presence=member("alice"))
    await js.subscribe("a2", "presence-room", presence=member("alice"))
    await js.subscribe("b", "presence-room", presence=member("bob"))

    since = js.mark()
    assert await js.trigger("a", "presence-room", "client-hi", {"user_id": "mallory"})
    for client in ("a2", "b"):
        got = await js.wait_for(client=client, type="event", event="client-hi", since=since)
        assert got["user_id"] == "alice" and got["metadata"] == {"user_id": "alice"}
        assert got["data"] == {"user_id": "mallory"}
    await roundtrip(js, "a")
    assert not events(js, "a", "client-hi")

    # A member that joined through its sign-in (no channel_data): user_id is the sign-in id.
    await connect(js, kanal_server, "s")
    await js.signin("s", {"id": "signed-sam"})
    await js.subscribe("s", "presence-room")
    since = js.mark()
    assert await js.trigger("s", "presence-room", "client-hi", 1)
    got = await js.wait_for(client="b", type="event", event="client-hi", since=since)
    assert got["user_id"] == "signed-sam"


async def _assert_rejected(
    js: JsDriver, sender: str, receiver: str, channel: str, *, raw: bool = False
) -> Record:
    """``sender`` sends ``client-x`` on ``channel``; it gets ``pusher:error`` and ``receiver``
    (subscribed to the channel) gets nothing, with the connection still working."""
    since = js.mark()
    if raw:
        assert await js.send_raw(sender, "client-x", {"n": 1}, channel=channel)
    else:
        assert await js.trigger(sender, channel, "client-x", {"n": 1})
    err = await _error_after(js, sender, since)
    assert err["data"]["code"] in (None, 4301), err
    await roundtrip(js, sender)
    await roundtrip(js, receiver)
    assert not js.records(type="event", event="client-x", since=since)
    assert not closes(js, sender)
    return err


@pytest.mark.parametrize("channel", ["public-chat", "cache-chat"])
async def test_rejected_on_public_channels(
    kanal_server: RunningServer, js: JsDriver, channel: str
) -> None:
    """channels.md §1 table, §8.1 rule 3, limits.md §3: client events on public and cache-
    channels are rejected with a non-fatal ``pusher:error`` (pusher-js sends them; the
    server refuses)."""
    for client in ("a", "b"):
        await connect(js, kanal_server, client)
        await js.subscribe(client, channel)
    await _assert_rejected(js, "a", "b", channel)


async def test_rejected_on_encrypted_channels(kanal_server: RunningServer, js: JsDriver) -> None:
    """encryption.md §4-§5, channels.md §8.1 rule 3: pusher-js refuses client events on
    private-encrypted- channels itself; sent raw, the server rejects them too."""
    channel = "private-encrypted-room"
    for client in ("a", "b"):
        await connect(js, kanal_server, client, master_key=MASTER_KEY)
        await js.subscribe(client, channel)
    ok = await js.trigger("a", channel, "client-x", {"n": 1})
    assert ok is False
    result = js.records(client="a", type="trigger_result")[-1]
    assert "not currently supported" in str(result["error"])
    await _assert_rejected(js, "a", "b", channel, raw=True)


async def test_rejected_when_not_subscribed(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §8.1 rule 2: a client event on a channel the sender is not subscribed to
    is rejected (pusher:error) and not relayed."""
    for client in ("a", "b"):
        await connect(js, kanal_server, client)
    await js.subscribe("b", "private-chat")
    await _assert_rejected(js, "a", "b", "private-chat", raw=True)


async def test_rejected_when_app_disables_them(start_server: StartServer, js: JsDriver) -> None:
    """channels.md §8.1 rule 1: with enable_client_messages=False every client event is
    rejected with ``pusher:error``; the connection stays open."""
    server = await start_server(apps=[make_app(enable_client_messages=False)])
    for client in ("a", "b"):
        await connect(js, server, client)
        await js.subscribe(client, "private-chat")
        await js.subscribe(client, "presence-room", presence=member(client))
    await _assert_rejected(js, "a", "b", "private-chat")
    await _assert_rejected(js, "a", "b", "presence-room")


async def test_rate_limit(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §8.1 rule 6, protocol.md §6.2, limits.md §3: of a burst of 20 client
    events from one connection about 10 are relayed (in order), each excess one gets
    ``pusher:error`` code 4301 ("Client event rejected due to rate limit"); the connection is
    never closed."""
    for client in ("a", "b"):
        await connect(js, kanal_server, client, frames=True)
        await js.subscribe(client, "private-chat")
    since = js.mark()
    burst = 20
    results = await asyncio.gather(
        *(js.trigger("a", "private-chat", "client-n", {"i": i}) for i in range(burst))
    )
    assert all(results)
    # Sentinel: after the burst, an HTTP event on the channel reaches b behind every relay.
    await roundtrip(js, "a")
    await call(sdk(kanal_server).trigger, "private-chat", "sentinel", {})
    await js.wait_for(client="b", type="event", event="sentinel", since=since)

    relayed = [r["data"]["i"] for r in events(js, "b", "client-n", since=since)]
    errors = js.records(client="a", type="message", event="pusher:error", since=since)
    assert 10 <= len(relayed) < burst, relayed
    assert relayed == sorted(relayed)
    assert len(relayed) + len(errors) == burst, (relayed, errors)
    for err in errors:
        assert err["data"] == {"code": 4301, "message": "Client event rejected due to rate limit"}
    wire = frames_in(js, "a", "pusher:error", since=since)
    assert len(wire) == len(errors) and all(f["data"]["code"] == 4301 for f in wire)

    await roundtrip(js, "a")
    assert not closes(js, "a")
    assert js.records(client="a", type="state")[-1]["current"] == "connected"


async def test_size_limits(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §8.1 rules 4-5, limits.md §1, §3: a client event whose name is over 200
    characters, or whose compact-JSON data is over 10240 bytes, is rejected (non-fatal
    ``pusher:error``); at the limits it is relayed."""
    for client in ("a", "b"):
        await connect(js, kanal_server, client)
        await js.subscribe(client, "private-chat")
    long_name = "client-" + "n" * (200 - len("client-"))
    since = js.mark()
    assert await js.trigger("a", "private-chat", long_name, {})
    await js.wait_for(client="b", type="event", event=long_name, since=since)
    await _assert_rejected_event(js, "a", "b", "private-chat", long_name + "n", {})

    fits = {"b": "x" * (10240 - 8)}  # {"b":"xxx…"}: 10240 bytes of compact JSON
    assert len(json.dumps(fits, separators=(",", ":"))) == 10240
    assert await js.trigger("a", "private-chat", "client-big", fits)
    await js.wait_for(client="b", type="event", event="client-big", data=fits, since=since)
    over = {"b": fits["b"] + "x"}
    await _assert_rejected_event(js, "a", "b", "private-chat", "client-huge", over)


async def _assert_rejected_event(
    js: JsDriver, sender: str, receiver: str, channel: str, event: str, data: Any
) -> None:
    since = js.mark()
    assert await js.trigger(sender, channel, event, data)
    err = await _error_after(js, sender, since)
    assert err["data"]["code"] is None, err
    await roundtrip(js, sender)
    await roundtrip(js, receiver)
    assert not js.records(type="event", event=event, since=since)
    assert not closes(js, sender)
