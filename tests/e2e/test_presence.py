"""Presence channels with pusher-js: member lists, member_added/removed, duplicate users,
signed-in members and the per-channel limits (issue item 4)."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import RunningServer, StartServer, make_app

from .helpers import call, connect, frames_in, roundtrip, sdk, subscription_count, wait_until
from .jsclient import JsDriver

ROOM = "presence-room"


def member(user_id: Any, info: Any = None) -> dict[str, Any]:
    return {"user_id": user_id, "user_info": info}


async def test_members_lifecycle(
    kanal_server: RunningServer, js: JsDriver, client_transport: str
) -> None:
    """channels.md §4.1-§4.4, protocol.md §4.5-§4.6: pusher-js sees the member list and
    ``me``; member_added goes to the others only; a user's second connection is counted once
    and adds no member; member_removed comes only when the user's last connection leaves."""
    api = sdk(kanal_server)
    for client in ("a", "b", "b2"):
        await connect(js, kanal_server, client)

    ok = await js.subscribe("a", ROOM, presence=member("u1", {"name": "Alice"}))
    assert ok["members"] == {
        "count": 1,
        "me": {"id": "u1", "info": {"name": "Alice"}},
        "myID": "u1",
        "members": {"u1": {"name": "Alice"}},
    }

    since = js.mark()
    ok = await js.subscribe("b", ROOM, presence=member("u2", {"name": "Bob"}))
    assert ok["members"]["count"] == 2
    assert ok["members"]["me"] == {"id": "u2", "info": {"name": "Bob"}}
    assert ok["members"]["members"] == {"u1": {"name": "Alice"}, "u2": {"name": "Bob"}}
    added = await js.wait_for(client="a", type="member_added", since=since)
    assert added["member"] == {"id": "u2", "info": {"name": "Bob"}}
    assert added["members"]["count"] == 2

    # Same user on a second connection: counted once, no member_added to anyone; the
    # info shown stays the earliest connection's (§4.1 [choice]).
    since = js.mark()
    ok = await js.subscribe("b2", ROOM, presence=member("u2", {"name": "Bob (phone)"}))
    assert ok["members"]["count"] == 2
    assert ok["members"]["members"]["u2"] == {"name": "Bob"}
    await call(api.trigger, ROOM, "sentinel", {})
    for client in ("a", "b", "b2"):
        await js.wait_for(client=client, type="event", event="sentinel", since=since)
    assert not js.records(type="member_added", since=since)
    assert not js.records(client="b", type="member_added")  # never about oneself
    assert (await js.members("a", ROOM))["count"] == 2

    # u2's first connection leaves: u2 is still there through b2.
    since = js.mark()
    await js.disconnect("b")
    await wait_until(lambda: subscription_count(api, ROOM), lambda n: n == 2)
    await call(api.trigger, ROOM, "sentinel", {})
    await js.wait_for(client="a", type="event", event="sentinel", since=since)
    assert not js.records(type="member_removed", since=since)

    # u2's last connection leaves: member_removed.
    since = js.mark()
    await js.disconnect("b2")
    removed = await js.wait_for(client="a", type="member_removed", since=since)
    assert removed["member"]["id"] == "u2"
    assert removed["members"]["count"] == 1
    assert (await js.members("a", ROOM))["members"] == {"u1": {"name": "Alice"}}


async def test_numeric_user_id_is_a_string(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §4.1 (user_id normalisation), protocol.md §4.5-§4.6: a numeric
    ``user_id`` in channel_data (as Node's SDK signs it) is sent back as a string in the
    member list and in member_added / member_removed."""
    await connect(js, kanal_server, "a", frames=True)
    await connect(js, kanal_server, "b")
    await js.subscribe("a", ROOM, presence=member("1", None))
    await js.subscribe("b", ROOM, presence=member(10, {"n": 10}))
    added = await js.wait_for(client="a", type="member_added")
    assert added["member"] == {"id": "10", "info": {"n": 10}}
    [frame] = frames_in(js, "a", "pusher_internal:member_added")
    assert json.loads(frame["data"]) == {"user_id": "10", "user_info": {"n": 10}}
    await js.disconnect("b")
    await js.wait_for(client="a", type="member_removed")
    [frame] = frames_in(js, "a", "pusher_internal:member_removed")
    assert json.loads(frame["data"]) == {"user_id": "10"}


async def test_signed_in_user_as_member(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §3.2, §4.5, users.md §1: a signed-in connection may join a presence channel
    with no channel_data; it becomes a member with its sign-in id and user_info. channel_data
    given by the authorizer overrides the sign-in identity."""
    await connect(js, kanal_server, "a", frames=True)
    await connect(js, kanal_server, "b")
    await connect(js, kanal_server, "c")
    await js.signin("a", {"id": "alice", "user_info": {"name": "Alice"}})
    ok = await js.subscribe("a", ROOM)  # the authorizer returns only {auth}
    sent = [json.loads(r["data"]) for r in js.records(client="a", type="frame", dir="out")]
    [subscribe] = [f for f in sent if f["data"].get("channel") == ROOM]
    assert "channel_data" not in subscribe["data"]
    assert ok["members"]["me"] == {"id": "alice", "info": {"name": "Alice"}}

    await js.subscribe("b", ROOM, presence=member("bob"))
    added = await js.wait_for(client="a", type="member_added")
    assert added["member"] == {"id": "bob", "info": None}
    # Signed in as carol, but the authorizer's channel_data says otherwise: that wins.
    await js.signin("c", {"id": "carol", "user_info": {"name": "Carol"}})
    since = js.mark()
    ok = await js.subscribe("c", ROOM, presence=member("carol-alias", 1))
    assert ok["members"]["me"] == {"id": "carol-alias", "info": 1}
    added = await js.wait_for(client="a", type="member_added", since=since)
    assert added["member"] == {"id": "carol-alias", "info": 1}


async def test_member_limit(start_server: StartServer, js: JsDriver) -> None:
    """channels.md §4.6, §3.4: with max_presence_members=2 a third distinct user is refused
    (``pusher:subscription_error`` type LimitReached, then ``pusher:error``); another
    connection of a present user is still accepted."""
    server = await start_server(apps=[make_app(max_presence_members=2)])
    for client in ("u1", "u2", "u3", "u1bis"):
        await connect(js, server, client)
    await js.subscribe("u1", ROOM, presence=member("u1"))
    await js.subscribe("u2", ROOM, presence=member("u2"))
    since = js.mark()
    await js.subscribe("u3", ROOM, presence=member("u3"), expect_error=True)
    err = await js.wait_for(client="u3", type="subscription_error", channel=ROOM, since=since)
    assert err["error"]["type"] == "LimitReached", err
    msg = await js.wait_for(client="u3", type="message", event="pusher:error", since=since)
    assert msg["data"]["code"] is None
    ok = await js.subscribe("u1bis", ROOM, presence=member("u1"))
    assert ok["members"]["count"] == 2
    await js.subscribe("u3", "presence-elsewhere", presence=member("u3"))
    await roundtrip(js, "u1")
    assert not js.records(client="u1", type="member_added", member={"id": "u3", "info": None})

    # Once u2 has left, there is room for u3 (a fresh connection: pusher-js keeps a failed
    # subscription pending and would not retry it).
    api = sdk(server)
    await js.disconnect("u2")
    await wait_until(lambda: call(api.users_info, ROOM), lambda r: len(r["users"]) == 1)
    await connect(js, server, "u3-again")
    ok = await js.subscribe("u3-again", ROOM, presence=member("u3"))
    assert set(ok["members"]["members"]) == {"u1", "u3"}


async def test_user_info_size_limit(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §4.6, limits.md §1: user_info up to 1024 bytes of compact JSON is accepted,
    1025 bytes is refused with ``pusher:subscription_error`` (LimitReached) and ``pusher:error``;
    likewise a user_id over 128 characters."""
    await connect(js, kanal_server, "a")
    at_limit = {"b": "x" * 1016}  # {"b":"xxx…"} = 1024 bytes
    assert len(json.dumps(at_limit, separators=(",", ":"))) == 1024
    ok = await js.subscribe("a", ROOM, presence=member("u1", at_limit))
    assert ok["members"]["me"]["info"] == at_limit

    over = {"b": "x" * 1017}
    since = js.mark()
    await js.subscribe("a", "presence-big", presence=member("u1", over), expect_error=True)
    err = await js.wait_for(client="a", type="subscription_error", channel="presence-big")
    assert err["error"]["type"] == "LimitReached", err
    msg = await js.wait_for(client="a", type="message", event="pusher:error", since=since)
    assert msg["data"]["code"] is None

    # Same for a user_id over 128 characters; 128 is fine.
    since = js.mark()
    await js.subscribe("a", "presence-long", presence=member("i" * 129), expect_error=True)
    err = await js.wait_for(client="a", type="subscription_error", channel="presence-long")
    assert err["error"]["type"] == "LimitReached", err
    await js.wait_for(client="a", type="message", event="pusher:error", since=since)
    await js.subscribe("a", "presence-ok", presence=member("i" * 128))


async def test_unsubscribe_and_rejoin(kanal_server: RunningServer, js: JsDriver) -> None:
    """channels.md §3.5, §4.3-§4.4: ``pusher.unsubscribe`` (no disconnect) removes the member
    (member_removed to the others); subscribing again re-adds it with a fresh member list."""
    await connect(js, kanal_server, "a")
    await connect(js, kanal_server, "b")
    await js.subscribe("a", ROOM, presence=member("alice", 1))
    await js.subscribe("b", ROOM, presence=member("bob", 2))
    since = js.mark()
    await js.unsubscribe("b", ROOM)
    removed = await js.wait_for(client="a", type="member_removed", since=since)
    assert removed["member"]["id"] == "bob" and removed["members"]["count"] == 1

    since = js.mark()
    ok = await js.subscribe("b", ROOM, presence=member("bob", 3))
    assert ok["members"]["members"] == {"alice": 1, "bob": 3}
    added = await js.wait_for(client="a", type="member_added", since=since)
    assert added["member"] == {"id": "bob", "info": 3}
