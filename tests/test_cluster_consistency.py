"""A cluster looks like one server: whichever node a client or the HTTP API talks to, it sees
the same events, members, counts, channels, cache and users (issue item 2).

Every test runs real in-process nodes sharing one Redis (:mod:`tests.cluster_nodes`);
several run with 2 and with 3 nodes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kanal.protocol.errors import CloseCode
from tests.cluster_nodes import Cluster, channel_info, channel_names, cluster, poll, user_ids
from tests.conftest import APP_ID, RunningServer
from tests.wsclient import Clients, Frame, WsClient, api_request, data_of, trigger

__all__ = ["cluster"]

pytestmark = pytest.mark.redis

NODE_COUNTS = pytest.mark.parametrize("size", [2, 3], ids=["2-nodes", "3-nodes"])


async def collect_until(client: WsClient, channel: str, last: str) -> list[Frame]:
    """Every frame of ``channel`` up to and including event ``last`` (a sentinel)."""
    seen: list[Frame] = []
    while True:
        frame = await client.next_frame()
        if frame.get("channel") != channel:
            continue
        seen.append(frame)
        if frame["event"] == last:
            return seen


def numbers(frames: list[Frame], event: str) -> list[Any]:
    return [data_of(f)["n"] for f in frames if f["event"] == event]


@NODE_COUNTS
async def test_events_from_every_node_reach_every_node_once_in_order(
    cluster: Cluster, size: int
) -> None:
    nodes = await cluster.nodes(size)
    async with Clients() as clients:
        subscribers = []
        for node in nodes:
            for _ in range(2):
                client = await clients.connect(node)
                await client.subscribe("fanout")
                subscribers.append(client)
        for n in range(50):  # sequential triggers, round-robin over the nodes' HTTP APIs
            await trigger(nodes[n % size], "fanout", "tick", json.dumps({"n": n}))
        await trigger(nodes[-1], "fanout", "end", "{}")
        for client in subscribers:
            frames = await collect_until(client, "fanout", "end")
            assert numbers(frames, "tick") == list(range(50))
            assert [f["event"] for f in frames].count("end") == 1


@NODE_COUNTS
async def test_concurrent_triggers_arrive_in_one_order_on_every_node(
    cluster: Cluster, size: int
) -> None:
    nodes = await cluster.nodes(size)
    async with Clients() as clients:
        subscribers = []
        for node in nodes:
            client = await clients.connect(node)
            await client.subscribe("race")
            subscribers.append(client)

        async def burst(node: RunningServer, source: int) -> None:
            for i in range(20):
                await trigger(node, "race", "tick", json.dumps({"n": [source, i]}))

        await asyncio.gather(*(burst(node, source) for source, node in enumerate(nodes)))
        await trigger(nodes[0], "race", "end", "{}")
        orders = [numbers(await collect_until(c, "race", "end"), "tick") for c in subscribers]
    first = orders[0]
    assert sorted(map(tuple, first)) == [(s, i) for s in range(size) for i in range(20)]
    for source in range(size):  # each node's own triggers keep their order
        assert [i for s, i in first if s == source] == list(range(20))
    for order in orders[1:]:  # and every node delivers the same interleaving
        assert order == first


async def test_client_events_cross_nodes(cluster: Cluster) -> None:
    a, b = await cluster.nodes(2)
    async with Clients() as clients:
        alice, bob = await clients.connect(a), await clients.connect(b)
        await alice.join_presence("presence-chat", "alice")
        await bob.join_presence("presence-chat", "bob")
        await alice.expect("pusher_internal:member_added", "presence-chat")
        await alice.send("client-typing", {"who": "alice"}, channel="presence-chat")
        frame = await bob.expect("client-typing", "presence-chat")
        assert (data_of(frame), frame["user_id"]) == ({"who": "alice"}, "alice")
        await bob.send("client-typing", {"who": "bob"}, channel="presence-chat")
        frame = await alice.expect("client-typing", "presence-chat")
        assert (data_of(frame), frame["user_id"]) == ({"who": "bob"}, "bob")
        # Never echoed: a ping round trip proves nothing else was queued for the senders.
        for client in (alice, bob):
            await client.ping()
            assert not [f for f in client.skipped if f.get("event") == "client-typing"]

        carol, dave = await clients.connect(a), await clients.connect(b)
        await carol.subscribe("private-room")
        await dave.subscribe("private-room")
        await dave.send("client-hello", {"x": 1}, channel="private-room")
        frame = await carol.expect("client-hello", "private-room")
        assert data_of(frame) == {"x": 1} and "user_id" not in frame


async def test_socket_id_exclusion_across_nodes(cluster: Cluster) -> None:
    a, b = await cluster.nodes(2)
    async with Clients() as clients:
        on_a, on_b = await clients.connect(a), await clients.connect(b)
        for client in (on_a, on_b):
            await client.subscribe("news")
        # Exclude a client of node A through node B's API, and the other way round.
        await trigger(b, "news", "not-for-a", "{}", socket_id=on_a.socket_id)
        await trigger(a, "news", "not-for-b", "{}", socket_id=on_b.socket_id)
        await trigger(a, "news", "end", "{}")
        events_a = [f["event"] for f in await collect_until(on_a, "news", "end")]
        events_b = [f["event"] for f in await collect_until(on_b, "news", "end")]
        assert events_a == ["not-for-b", "end"]
        assert events_b == ["not-for-a", "end"]


async def counts_everywhere(
    nodes: list[RunningServer], channel: str, info: str = "user_count,subscription_count"
) -> list[dict[str, Any]]:
    return [await channel_info(node, channel, info) for node in nodes]


async def wait_counts(
    nodes: list[RunningServer],
    channel: str,
    users: int,
    subs: int,
    info: str = "user_count,subscription_count",
) -> None:
    """Poll until every node reports these counts for ``channel``."""
    want: dict[str, Any] = {"occupied": subs > 0, "subscription_count": subs}
    if "user_count" in info:
        want["user_count"] = users
    await poll(
        lambda: counts_everywhere(nodes, channel, info),
        lambda seen: all(s == want for s in seen),
        what=f"{channel}: {want} on every node",
    )


@NODE_COUNTS
async def test_presence_members_and_counts_agree_on_every_node(cluster: Cluster, size: int) -> None:
    room = "presence-room"
    nodes = await cluster.nodes(size)
    async with Clients() as clients:
        members: list[WsClient] = []
        for i, node in enumerate(nodes):
            client = await clients.connect(node)
            roster = await client.join_presence(room, f"u{i}", {"node": i})
            assert sorted(roster["ids"]) == [f"u{j}" for j in range(i + 1)]
            assert roster["hash"] == {f"u{j}": {"node": j} for j in range(i + 1)}
            assert roster["count"] == i + 1
            for earlier in members:  # member_added crosses nodes
                frame = await earlier.expect("pusher_internal:member_added", room)
                assert data_of(frame) == {"user_id": f"u{i}", "user_info": {"node": i}}
            members.append(client)
        await wait_counts(nodes, room, size, size)
        for node in nodes:
            assert await user_ids(node, room) == {f"u{i}" for i in range(size)}

        # u0 again, on the last node: counted once, no member_added for anyone.
        again = await clients.connect(nodes[-1])
        roster = await again.join_presence(room, "u0", {"node": "other"})
        assert roster["hash"]["u0"] == {"node": 0}  # the earliest connection's info
        await wait_counts(nodes, room, size, size + 1)
        await trigger(nodes[0], room, "sentinel", "{}")
        for client in members:
            seen = await collect_until(client, room, "sentinel")
            assert [f["event"] for f in seen] == ["sentinel"]

        # u0's first connection leaves: u0 stays (no member_removed); its last one: removed.
        await members[0].close()
        await wait_counts(nodes, room, size, size)
        await trigger(nodes[0], room, "sentinel", "{}")
        for client in members[1:]:
            seen = await collect_until(client, room, "sentinel")
            assert [f["event"] for f in seen] == ["sentinel"]
        await again.close()
        for client in members[1:]:
            frame = await client.expect("pusher_internal:member_removed", room)
            assert data_of(frame) == {"user_id": "u0"}
        await wait_counts(nodes, room, size - 1, size - 1)
        for node in nodes:
            assert await user_ids(node, room) == {f"u{i}" for i in range(1, size)}


@NODE_COUNTS
async def test_channel_lists_and_subscription_counts_agree(cluster: Cluster, size: int) -> None:
    nodes = await cluster.nodes(size)
    async with Clients() as clients:
        expected: dict[str, dict[str, int]] = {}
        for i, node in enumerate(nodes):
            client = await clients.connect(node)
            await client.subscribe("shared")
            await client.subscribe(f"only-{i}")
            await client.join_presence("presence-lobby", f"user-{i % 2}")
            expected[f"only-{i}"] = {"subscription_count": 1}
        expected["shared"] = {"subscription_count": size}
        expected["presence-lobby"] = {"subscription_count": size}
        for node in nodes:
            assert await channel_names(node) == expected
            listed = await api_request(
                node,
                "GET",
                f"/apps/{APP_ID}/channels",
                params={"filter_by_prefix": "presence-", "info": "user_count"},
            )
            assert listed.json() == {"channels": {"presence-lobby": {"user_count": min(size, 2)}}}
            assert await channel_info(node, "shared", "subscription_count") == {
                "occupied": True,
                "subscription_count": size,
            }
        for client in clients.all:
            await client.unsubscribe("shared")
        for node in nodes:
            await wait_counts([node], "shared", 0, 0, info="subscription_count")
            listed_now = await channel_names(node)
            assert "shared" not in listed_now and "only-0" in listed_now


async def test_subscription_count_events_cross_nodes(cluster: Cluster) -> None:
    apps = [await cluster.app(enable_subscription_count=True)]
    a, b = await cluster.node(apps=apps), await cluster.node(apps=apps)
    async with Clients() as clients:
        first = await clients.connect(a)
        await first.subscribe("counted")
        frame = await first.expect("pusher_internal:subscription_count", "counted")
        assert data_of(frame) == {"subscription_count": 1}
        second = await clients.connect(b)
        await second.subscribe("counted")
        for client in (first, second):
            await client.expect(
                lambda f: (
                    f.get("event") == "pusher_internal:subscription_count"
                    and data_of(f) == {"subscription_count": 2}
                )
            )
        await second.close()
        frame = await first.expect("pusher_internal:subscription_count", "counted")
        assert data_of(frame) == {"subscription_count": 1}


async def test_cache_channel_last_event_is_shared(cluster: Cluster) -> None:
    a, b = await cluster.nodes(2)
    await trigger(a, "cache-prices", "price", '{"eur":1}')
    for node in (a, b):
        info = await channel_info(node, "cache-prices", "cache")
        assert info["occupied"] is False
        assert info["cache"]["data"] == '{"eur":1}' and info["cache"]["ttl"] > 0
    async with Clients() as clients:
        late = await clients.connect(b)
        await late.subscribe("cache-prices")
        frame = await late.expect_next("price", "cache-prices")
        assert data_of(frame) == {"eur": 1}
        await trigger(b, "cache-prices", "price", '{"eur":2}')
        await late.expect_next("price", "cache-prices")
        other = await clients.connect(a)
        await other.subscribe("cache-prices")
        frame = await other.expect_next("price", "cache-prices")
        assert data_of(frame) == {"eur": 2}


async def test_terminate_connections_reaches_other_nodes(cluster: Cluster) -> None:
    a, b, c = await cluster.nodes(3)
    async with Clients() as clients:
        target_a, target_c = await clients.connect(a), await clients.connect(c)
        bystander = await clients.connect(a)
        for client in (target_a, target_c):
            await client.signin({"id": "mallory"})
        await bystander.signin({"id": "alice"})
        response = await api_request(
            b, "POST", f"/apps/{APP_ID}/users/mallory/terminate_connections", body={}
        )
        assert response.status == 200, response.body
        for client in (target_a, target_c):
            assert await client.expect_closed() == CloseCode.UNAUTHORIZED
        await bystander.ping()  # untouched


async def test_server_to_user_reaches_every_node(cluster: Cluster) -> None:
    a, b, c = await cluster.nodes(3)
    async with Clients() as clients:
        on_a, on_c = await clients.connect(a), await clients.connect(c)
        other = await clients.connect(b)
        for client in (on_a, on_c):
            await client.signin({"id": "u1"})
        await other.signin({"id": "u2"})
        await trigger(b, "#server-to-user-u1", "note", '{"n":1}')
        for client in (on_a, on_c):
            frame = await client.expect("note", "#server-to-user-u1")
            assert data_of(frame) == {"n": 1}
        # socket_id exclusion applies to server-to-user events on other nodes too.
        await trigger(b, "#server-to-user-u1", "note", '{"n":2}', socket_id=on_a.socket_id)
        frame = await on_c.expect("note", "#server-to-user-u1")
        assert data_of(frame) == {"n": 2}
        await trigger(a, "#server-to-user-u1", "end", "{}")
        seen = await collect_until(on_a, "#server-to-user-u1", "end")
        assert [f["event"] for f in seen] == ["end"]
        await other.ping()
        assert not [f for f in other.skipped + other.frames if f.get("event") == "note"]


async def test_max_connections_is_enforced_cluster_wide(cluster: Cluster) -> None:
    apps = [await cluster.app(max_connections=2)]
    a, b = await cluster.node(apps=apps), await cluster.node(apps=apps)
    async with Clients() as clients:
        first = await clients.connect(a)
        await clients.connect(b)
        for node in (a, b):
            refused = await clients.open(node)
            await refused.expect_error(CloseCode.OVER_QUOTA)
            assert await refused.expect_closed() == CloseCode.OVER_QUOTA
        await first.close()  # a slot frees up cluster-wide

        async def admitted() -> bool:
            client = await clients.open(b)
            frame = await client.next_frame()
            await client.close()
            return bool(frame["event"] == "pusher:connection_established")

        await poll(admitted, bool, what="a connection admitted after one closed")


async def test_presence_member_limit_is_cluster_wide(cluster: Cluster) -> None:
    apps = [await cluster.app(max_presence_members=2)]
    a, b = await cluster.node(apps=apps), await cluster.node(apps=apps)
    async with Clients() as clients:
        await (await clients.connect(a)).join_presence("presence-small", "u1")
        await (await clients.connect(b)).join_presence("presence-small", "u2")
        for node in (a, b):
            third = await clients.connect(node)
            channel_data = json.dumps({"user_id": "u3", "user_info": None})
            await third.send_subscribe("presence-small", channel_data=channel_data)
            error = await third.expect("pusher:subscription_error", "presence-small")
            assert data_of(error)["status"] == 403
        again = await clients.connect(b)  # a user already in: not a new member
        roster = await again.join_presence("presence-small", "u1")
        assert sorted(roster["ids"]) == ["u1", "u2"]
