"""Interest-based fan-out (``[scaling] redis_fanout = "channel"``; issue 19 item 3): a node
receives an app's event only while it has a local subscriber of the channel (or, for user
events, a connection signed in as the user), and a subscriber that has been told it is
subscribed misses nothing, even while its node is still joining the Redis channel.

Every test runs in both fan-out modes (the ``cluster`` fixture); the Redis-side checks only
apply where the mode subscribes per channel.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aredis

from kanal.adapters.base import Envelope
from kanal.adapters.redis import RedisBroker
from tests.cluster_nodes import Cluster, TcpProxy, cluster, poll
from tests.conftest import APP_ID
from tests.wsclient import Clients, WsClient, data_of, trigger

__all__ = ["cluster"]

pytestmark = pytest.mark.redis

CHANNELS = [f"race-{i}" for i in range(30)]


async def ticks_until_end(client: WsClient, channel: str) -> list[int]:
    """The ``n`` of every ``tick`` on ``channel`` up to the ``end`` sentinel."""
    seen: list[int] = []
    while True:
        frame = await client.expect(lambda f: f.get("channel") == channel)
        if frame["event"] == "end":
            return seen
        seen.append(data_of(frame)["n"])


async def test_subscribers_joining_during_a_trigger_loop_miss_nothing_after_succeeded(
    cluster: Cluster,
) -> None:
    publishing, joining = await cluster.nodes(2)
    begun = 0  # triggers whose request has started; trigger n is the (n+1)th
    stop = asyncio.Event()

    async def trigger_loop() -> None:
        nonlocal begun
        while not stop.is_set():
            begun += 1
            await trigger(publishing, CHANNELS, "tick", json.dumps({"n": begun - 1}))

    due: dict[str, int] = {}  # channel -> first trigger started after subscription_succeeded

    async def join(client: WsClient, channel: str) -> None:
        await client.subscribe(channel)  # the first local subscriber: the node subscribes
        due[channel] = begun

    async with Clients() as clients:
        subscribers = [await clients.connect(joining) for _ in CHANNELS]
        loop = asyncio.create_task(trigger_loop())
        for at in range(0, len(CHANNELS), 5):  # five at a time: batched SUBSCRIBEs
            group = zip(subscribers[at : at + 5], CHANNELS[at : at + 5], strict=True)
            await asyncio.gather(*(join(client, channel) for client, channel in group))

        async def triggers_begun() -> int:
            return begun

        # A few more triggers after the last join, then the sentinel.
        await poll(triggers_begun, lambda n: n > due[CHANNELS[-1]] + 5)
        stop.set()
        await loop
        await trigger(publishing, CHANNELS, "end", "{}")
        for client, channel in zip(subscribers, CHANNELS, strict=True):
            seen = await ticks_until_end(client, channel)
            assert seen, f"{channel}: nothing after subscription_succeeded"
            assert seen == list(range(seen[0], begun)), f"{channel}: a gap or a repeat"
            assert seen[0] <= due[channel], f"{channel}: events after succeeded were lost"


async def node_listens(raw: aredis.Redis, cluster: Cluster, channel: str) -> int:
    """How many nodes are subscribed to ``channel``'s interest channel in Redis."""
    [(_, count)] = await raw.pubsub_numsub(f"{cluster.prefix}{{{APP_ID}}}:e:{channel}")
    return int(count)


async def test_a_node_listens_to_a_channel_from_its_first_to_its_last_local_subscriber(
    cluster: Cluster, raw: aredis.Redis
) -> None:
    a, b = await cluster.nodes(2)
    per_channel = cluster.fanout == "channel"
    async with Clients() as clients:
        first, second = await clients.connect(a), await clients.connect(a)
        other = await clients.connect(b)
        await first.subscribe("room")
        assert await node_listens(raw, cluster, "room") == (1 if per_channel else 0)
        await second.subscribe("room")
        await other.subscribe("room")
        assert await node_listens(raw, cluster, "room") == (2 if per_channel else 0)
        await first.send("pusher:unsubscribe", {"channel": "room"})
        await first.ping()  # the unsubscribe is processed
        assert await node_listens(raw, cluster, "room") == (2 if per_channel else 0)
        await trigger(b, "room", "still", "{}")  # node a still delivers to its other one
        await second.expect("still", "room")
        await other.expect("still", "room")
        await second.close()  # a's last subscriber: a unsubscribes (batched: shortly)
        await poll(lambda: node_listens(raw, cluster, "room"), lambda n: n == per_channel)
        await trigger(a, "room", "after", "{}")  # published where nobody listens locally
        await other.expect("after", "room")


async def test_user_events_and_watchlist_events_reach_the_user_on_every_node(
    cluster: Cluster,
) -> None:
    app = await cluster.app(enable_watchlist_events=True)
    a, b = await cluster.node(apps=[app]), await cluster.node(apps=[app])
    async with Clients() as clients:
        on_a, on_b = await clients.connect(a), await clients.connect(b)
        for client in (on_a, on_b):
            await client.signin({"id": "u1", "watchlist": ["u2"]})
            await client.expect("pusher_internal:watchlist_events")  # u2 offline
        bystander = await clients.connect(b)
        await bystander.signin({"id": "u3"})
        await trigger(a, "#server-to-user-u1", "direct", "{}")
        for client in (on_a, on_b):
            await client.expect("direct", "#server-to-user-u1")
        watched = await clients.connect(a)
        await watched.signin({"id": "u2"})  # u1's watchlist: online, on both nodes
        for client in (on_a, on_b):
            frame = await client.expect("pusher_internal:watchlist_events")
            assert data_of(frame)["events"] == [{"name": "online", "user_ids": ["u2"]}]
        await bystander.assert_silent("direct")


async def test_listening_is_done_only_once_redis_has_confirmed_the_subscribe(
    redis_url: str, prefix: str
) -> None:
    """What makes the race above safe, with the window held open: the node's subscription
    connection is frozen, so Redis has not seen its SUBSCRIBE; an event published meanwhile
    is not for this node, and listen() is not done until the SUBSCRIBE is confirmed."""
    proxy = TcpProxy(redis_url)
    await proxy.start()
    node = RedisBroker(proxy.url, prefix=prefix, mode="channel")
    publisher = RedisBroker(redis_url, prefix=prefix, mode="channel")
    received: list[Envelope] = []
    node.attach(received.append)
    try:
        await node.start()
        proxy.freeze()
        listening = asyncio.ensure_future(node.listen(APP_ID, "channel", "room"))
        await publisher.publish(Envelope(APP_ID, "channel", "room", b"before"))  # accepted
        assert not listening.done()  # Redis has the event, not the node's SUBSCRIBE yet
        await proxy.restore()
        await asyncio.wait_for(listening, 5)
        await publisher.publish(Envelope(APP_ID, "channel", "room", b"after"))
        await publisher.publish(Envelope(APP_ID, "channel", "room", b"end"))

        async def payloads() -> list[bytes]:
            return [e.payload for e in received]

        assert await poll(payloads, lambda got: b"end" in got) == [b"after", b"end"]
    finally:
        await node.close()
        await publisher.close()
        await proxy.close()
