"""Exactly once for the whole cluster: occupancy and presence webhooks (and member events)
under concurrent joins and leaves on different nodes (issue item 3).

Every node sends its webhooks to its own path of one receiver (``/hook/<node>``); counts are
taken over all of them. Only the node that got the atomic first/last answer from Redis emits,
so each transition is sent once however the race between the nodes goes.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.cluster_nodes import Cluster, channel_info, cluster, poll
from tests.wsclient import Clients, Frame, WsClient, data_of, trigger

__all__ = ["cluster"]

pytestmark = pytest.mark.redis

ROOM = "presence-room"
ADDED, REMOVED = "pusher_internal:member_added", "pusher_internal:member_removed"


async def frames_until(client: WsClient, sentinel: str) -> list[Frame]:
    seen: list[Frame] = []
    while True:
        frame = await client.next_frame()
        seen.append(frame)
        if frame.get("event") == sentinel:
            return seen


def about(frames: list[Frame], event: str, user_id: str) -> int:
    return sum(1 for f in frames if f.get("event") == event and data_of(f)["user_id"] == user_id)


async def test_one_user_joining_and_leaving_on_two_nodes_at_once(cluster: Cluster) -> None:
    a, b = await cluster.node(hook="a"), await cluster.node(hook="b")
    hooks = await cluster.hooks()
    async with Clients() as clients:
        observers = [await clients.connect(a), await clients.connect(b)]
        await observers[0].join_presence(ROOM, "observer-a")
        await observers[1].join_presence(ROOM, "observer-b")
        await observers[0].expect("pusher_internal:member_added", ROOM)
        same = [await clients.connect(node) for node in (a, b) for _ in range(5)]

        # Ten connections of one user subscribe at the same moment, five per node.
        channel_data = json.dumps({"user_id": "same", "user_info": {"n": 1}})
        await asyncio.gather(*(c.send_subscribe(ROOM, channel_data=channel_data) for c in same))
        for client in same:
            await client.expect("pusher_internal:subscription_succeeded", ROOM)
        await trigger(a, ROOM, "sentinel", "{}")
        for observer in observers:
            assert (
                about(
                    await frames_until(observer, "sentinel"), "pusher_internal:member_added", "same"
                )
                == 1
            )
        assert (await channel_info(b, ROOM, "user_count"))["user_count"] == 3

        # ... and all leave at the same moment.
        await asyncio.gather(*(client.close() for client in same))
        for observer in observers:
            frame = await observer.expect("pusher_internal:member_removed", ROOM)
            assert data_of(frame) == {"user_id": "same"}
        await poll(
            lambda: channel_info(a, ROOM, "user_count,subscription_count"),
            lambda info: info["subscription_count"] == 2,
            what="the ten connections gone",
        )
        await trigger(b, ROOM, "sentinel", "{}")
        for observer in observers:
            assert (
                about(
                    await frames_until(observer, "sentinel"),
                    "pusher_internal:member_removed",
                    "same",
                )
                == 0
            )

        for observer in observers:
            await observer.close()
        await hooks.exactly_once(
            ("member_added", ROOM, "same"),
            ("member_removed", ROOM, "same"),
            ("channel_occupied", ROOM),
            ("channel_vacated", ROOM),
        )
    assert hooks.count("member_added", ROOM) == 3  # observer-a, observer-b, same
    assert hooks.invalid == 0


async def test_occupied_and_vacated_once_under_concurrent_subscribers(cluster: Cluster) -> None:
    a, b = await cluster.node(hook="a"), await cluster.node(hook="b")
    hooks = await cluster.hooks()
    async with Clients() as clients:
        subscribers = [await clients.connect(node) for _ in range(5) for node in (a, b)]
        for round_ in range(3):  # a fresh channel per round: no grace-period interplay
            channel = f"race-{round_}"
            await asyncio.gather(*(c.send_subscribe(channel) for c in subscribers))
            for client in subscribers:
                await client.expect("pusher_internal:subscription_succeeded", channel)
            await asyncio.gather(*(c.unsubscribe(channel) for c in subscribers))
        channels = [f"race-{round_}" for round_ in range(3)]
        await hooks.exactly_once(
            *[("channel_occupied", channel) for channel in channels],
            *[("channel_vacated", channel) for channel in channels],
        )
        for channel in channels:
            assert (await channel_info(b, channel)) == {"occupied": False}
    senders = {node for node, _ in hooks.events}
    assert senders <= {"a", "b"}
    assert hooks.invalid == 0


async def test_cache_miss_once_per_window_across_nodes(cluster: Cluster) -> None:
    a, b = await cluster.node(hook="a"), await cluster.node(hook="b")
    hooks = await cluster.hooks()
    async with Clients() as clients:
        for node in (a, b):  # one subscriber per node, well within one 5 s window
            client = await clients.connect(node)
            await client.subscribe("cache-empty")
            await client.expect("pusher:cache_miss", "cache-empty")
        await hooks.exactly_once(("cache_miss", "cache-empty"))
