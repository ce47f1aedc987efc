"""Presence channels over real WebSockets (channels.md §3.2, §4; protocol.md §4.5-4.6)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.conftest import RunningServer, StartServer, make_app
from tests.wsclient import Clients, WsClient, api_request, data_of, trigger, wait_until

ROOM = "presence-room"


@pytest.fixture
async def clients(start_server: StartServer) -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


async def next_presence_frame(client: WsClient) -> dict[str, object]:
    """The next frame on ROOM (member events and the HTTP sentinels used below)."""
    return await client.expect(lambda f: f.get("channel") == ROOM)


async def sentinel(server: RunningServer, name: str) -> None:
    """An HTTP event on ROOM: whatever a subscriber receives before it was sent earlier."""
    await trigger(server, ROOM, name, "{}")


async def test_first_subscriber_gets_a_roster_of_itself(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    frame = await client.subscribe(
        ROOM, channel_data='{"user_id":"1","user_info":{"name":"Alice"}}'
    )
    assert isinstance(frame["data"], str)
    assert data_of(frame) == {
        "presence": {"ids": ["1"], "hash": {"1": {"name": "Alice"}}, "count": 1}
    }


async def test_member_added_goes_to_others_only(
    kanal_server: RunningServer, clients: Clients
) -> None:
    alice = await clients.connect(kanal_server)
    await alice.join_presence(ROOM, "1", {"name": "Alice"})
    bob = await clients.connect(kanal_server)
    roster = await bob.join_presence(ROOM, "2", None)
    assert sorted(roster["ids"]) == ["1", "2"]
    assert roster["hash"] == {"1": {"name": "Alice"}, "2": None}  # the key exists even if null
    assert roster["count"] == 2
    added = await alice.expect_next("pusher_internal:member_added", ROOM)
    assert isinstance(added["data"], str)
    assert data_of(added) == {"user_id": "2", "user_info": None}
    await sentinel(kanal_server, "after-join")
    assert (await next_presence_frame(bob))["event"] == "after-join"  # no member_added to self


async def test_numeric_user_ids_become_strings(
    kanal_server: RunningServer, clients: Clients
) -> None:
    watcher = await clients.connect(kanal_server)
    await watcher.join_presence(ROOM, "w")
    client = await clients.connect(kanal_server)
    frame = await client.subscribe(ROOM, channel_data='{"user_id": 10, "user_info": {"n": 1}}')
    assert data_of(frame)["presence"]["hash"]["10"] == {"n": 1}
    assert data_of(await watcher.expect("pusher_internal:member_added"))["user_id"] == "10"


async def test_one_user_on_two_connections_counts_once(
    kanal_server: RunningServer, clients: Clients
) -> None:
    observer = await clients.connect(kanal_server)
    await observer.join_presence(ROOM, "obs")
    tab1 = await clients.connect(kanal_server)
    await tab1.join_presence(ROOM, "1", {"tab": 1})
    assert data_of(await next_presence_frame(observer))["user_id"] == "1"
    tab2 = await clients.connect(kanal_server)
    roster = await tab2.join_presence(ROOM, "1", {"tab": 2})
    assert roster["count"] == 2 and sorted(roster["ids"]) == ["1", "obs"]
    assert roster["hash"]["1"] == {"tab": 1}  # the earliest connection's user_info
    await sentinel(kanal_server, "after-second-tab")
    assert (await next_presence_frame(observer))["event"] == "after-second-tab"

    info = await api_request(
        kanal_server,
        "GET",
        f"/apps/1/channels/{ROOM}",
        params={"info": "user_count,subscription_count"},
    )
    assert info.json() == {"occupied": True, "user_count": 2, "subscription_count": 3}

    # member_removed only when the user's last connection leaves.
    await tab1.close()
    await wait_until(lambda: kanal_server.hub.connection_count == 2, what="tab1 cleanup")
    await sentinel(kanal_server, "after-first-tab-left")
    assert (await next_presence_frame(observer))["event"] == "after-first-tab-left"
    await tab2.unsubscribe(ROOM)
    removed = await next_presence_frame(observer)
    assert removed["event"] == "pusher_internal:member_removed"
    assert data_of(removed) == {"user_id": "1"}
    await sentinel(kanal_server, "end")
    assert (await next_presence_frame(observer))["event"] == "end"  # exactly once


async def test_member_removed_on_disconnect(kanal_server: RunningServer, clients: Clients) -> None:
    observer = await clients.connect(kanal_server)
    await observer.join_presence(ROOM, "obs")
    leaver = await clients.connect(kanal_server)
    await leaver.join_presence(ROOM, "gone")
    await observer.expect("pusher_internal:member_added", ROOM)
    await leaver.close()
    removed = await observer.expect("pusher_internal:member_removed", ROOM)
    assert removed["data"] == '{"user_id":"gone"}'


async def test_presence_requires_member_data(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.send_subscribe(ROOM)  # signed, but no channel_data and not signed in
    failure = await client.expect_next("pusher:subscription_error", ROOM)
    assert data_of(failure)["type"] == "AuthError"
    await client.expect_next("pusher:error")
    assert not kanal_server.hub.is_subscribed(client.socket_id, ROOM)


async def test_channel_data_signature_covers_the_exact_text(
    kanal_server: RunningServer, clients: Clients
) -> None:
    client = await clients.connect(kanal_server)
    signed = '{"user_id": "1"}'
    await client.send_subscribe(
        ROOM, channel_data='{"user_id":"1"}', auth=client.channel_auth(ROOM, signed)
    )
    await client.expect_next("pusher:subscription_error", ROOM)
    await client.subscribe(ROOM, channel_data=signed)  # Python spacing, verified as sent


async def test_presence_member_limit(start_server: StartServer, clients: Clients) -> None:
    server = await start_server(apps=[make_app(max_presence_members=2)])
    for user in ("1", "2"):
        await (await clients.connect(server)).join_presence(ROOM, user)
    third = await clients.connect(server)
    await third.send_subscribe(ROOM, channel_data='{"user_id":"3"}')
    failure = await third.expect_next("pusher:subscription_error", ROOM)
    assert data_of(failure)["type"] == "LimitReached"
    await third.expect_next("pusher:error")
    again = await clients.connect(server)  # another connection of a present user is fine
    assert (await again.join_presence(ROOM, "2"))["count"] == 2


async def test_presence_user_info_limit(start_server: StartServer, clients: Clients) -> None:
    server = await start_server(apps=[make_app(max_presence_user_info_bytes=64)])
    client = await clients.connect(server)
    big = json.dumps({"user_id": "1", "user_info": {"bio": "x" * 100}})
    await client.send_subscribe(ROOM, channel_data=big)
    failure = await client.expect_next("pusher:subscription_error", ROOM)
    assert data_of(failure)["type"] == "LimitReached"
    ok = json.dumps({"user_id": "1", "user_info": {"bio": "x" * 40}})
    await client.subscribe(ROOM, channel_data=ok)


async def test_presence_member_from_sign_in(kanal_server: RunningServer, clients: Clients) -> None:
    client = await clients.connect(kanal_server)
    await client.signin({"id": "alice", "user_info": {"name": "Alice"}})
    frame = await client.subscribe(ROOM)  # no channel_data: the signed-in user is the member
    assert data_of(frame)["presence"]["hash"] == {"alice": {"name": "Alice"}}
    other = await clients.connect(kanal_server)
    await other.signin({"id": "bob"})
    roster = await other.join_presence(ROOM, "override", {"from": "auth"})  # channel_data wins
    assert roster["hash"]["override"] == {"from": "auth"}
    assert "bob" not in roster["hash"]
