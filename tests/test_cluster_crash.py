"""Crash safety: a node killed with SIGKILL is reaped by the survivors within its lease, and
its departures are announced exactly once; a restarted node resurrects nothing (issue item 4).

The node that dies is a real ``kanal serve`` subprocess (``node_lease`` 1.5 s); the
survivor runs in this process. Both send webhooks to one receiver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import signal
from functools import partial
from typing import Any

import pytest

from kanal.protocol.errors import CloseCode
from tests.cluster_nodes import (
    LEASE,
    Cluster,
    channel_info,
    channel_names,
    cluster,
    poll,
    roster_seen_by,
    user_ids,
)
from tests.conftest import RunningServer
from tests.wsclient import Clients, Frame, WsClient, data_of, trigger

__all__ = ["cluster"]

pytestmark = pytest.mark.redis

ROOM = "presence-room"
# A dead lease expires after LEASE; a survivor's next reap round (every LEASE / 3) claims it.
REAPED_WITHIN = LEASE + LEASE / 3
MARGIN = 3.0  # scheduling slack on a busy CI machine


async def user_count(node: RunningServer) -> int:
    count: int = (await channel_info(node, ROOM, "user_count"))["user_count"]
    return count


async def test_killed_node_is_reaped_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    # Two survivors: both reap in the same rounds, and still each departure is told once.
    caplog.set_level(logging.INFO, logger="kanal.cluster")
    survivor = await cluster.node(hook="survivor")
    other = await cluster.node(hook="other")
    doomed = await cluster.spawn("doomed", hook="doomed")
    hooks = await cluster.hooks()
    async with Clients() as clients:
        alice = await clients.connect(survivor)
        await alice.join_presence(ROOM, "alice")
        await alice.subscribe("shared")
        both = await clients.connect(other)
        await both.join_presence(ROOM, "both")  # also connected to the doomed node

        victims: list[WsClient] = []
        for user in ("xavier", "yolanda", "both"):
            client = await clients.connect(doomed)
            await client.join_presence(ROOM, user)
            victims.append(client)
        await victims[0].subscribe("shared")
        await victims[0].subscribe("only-on-doomed")
        await victims[1].subscribe("private-only-on-doomed")
        for user in ("both", "xavier", "yolanda"):
            frame = await alice.expect("pusher_internal:member_added", ROOM)
            assert data_of(frame)["user_id"] == user
        assert await user_count(survivor) == 4
        listed = await channel_names(survivor)
        assert {"only-on-doomed", "private-only-on-doomed", "shared"} <= set(listed)
        await hooks.wait_for("channel_occupied", "only-on-doomed")

        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await doomed.kill()
        removed = set()
        for _ in range(2):
            frame = await alice.expect(
                "pusher_internal:member_removed", ROOM, within=REAPED_WITHIN + MARGIN
            )
            removed.add(data_of(frame)["user_id"])
        assert removed == {"xavier", "yolanda"}
        assert loop.time() - killed_at <= REAPED_WITHIN + MARGIN
        for client in (alice, both):  # exactly once, and never about "both" (still here)
            await trigger(survivor, ROOM, "sentinel", "{}")
            frame = await client.expect("sentinel", ROOM)
            member_events = [
                data_of(f)["user_id"]
                for f in client.skipped
                if f.get("event") == "pusher_internal:member_removed"
            ]
            assert sorted(member_events) == (["xavier", "yolanda"] if client is both else [])
            client.skipped.clear()

        for node in (survivor, other):
            assert await user_count(node) == 2
            assert await user_ids(node, ROOM) == {"alice", "both"}
            assert await channel_names(node) == {
                ROOM: {"subscription_count": 2},
                "shared": {"subscription_count": 1},
            }
        senders = await hooks.exactly_once(
            ("member_removed", ROOM, "xavier"),
            ("member_removed", ROOM, "yolanda"),
            ("channel_vacated", "only-on-doomed"),
            ("channel_vacated", "private-only-on-doomed"),
        )
        assert set(senders) <= {"survivor", "other"}  # the dead node sent nothing
        assert hooks.count("member_removed", ROOM, "both") == 0
        assert hooks.count("channel_vacated", ROOM) == 0
        assert hooks.count("channel_vacated", "shared") == 0
    assert hooks.invalid == 0
    # One line for the dead node, by whichever survivor claimed it (issue 17 item 3).
    reaped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reaped node")]
    assert len(reaped) == 1, reaped
    assert reaped[0].startswith(f"reaped node {platform.node()}:{doomed.pid} (lease ")


async def test_restarted_node_does_not_resurrect_stale_members(cluster: Cluster) -> None:
    survivor = await cluster.node(hook="survivor")
    first = await cluster.spawn("node-x", hook="x")
    hooks = await cluster.hooks()
    async with Clients() as clients:
        alice = await clients.connect(survivor)
        await alice.join_presence(ROOM, "alice")
        ghost = await clients.connect(first)
        await ghost.join_presence(ROOM, "ghost")
        await ghost.subscribe("ghost-town")
        await alice.expect("pusher_internal:member_added", ROOM)
        # Its webhooks are out before it dies (a killed node loses what it had queued).
        await hooks.wait_for("member_added", ROOM, "ghost")

        await first.kill()
        # The same node comes back at once, on the same port, before its lease ran out.
        again = await cluster.spawn("node-x", hook="x", port=first.port)
        assert await user_ids(again, ROOM) in ({"alice", "ghost"}, {"alice"})
        frame = await alice.expect(
            "pusher_internal:member_removed", ROOM, within=REAPED_WITHIN + MARGIN
        )
        assert data_of(frame) == {"user_id": "ghost"}
        for node in (survivor, again):
            assert await user_ids(node, ROOM) == {"alice"}
            assert "ghost-town" not in await channel_names(node)

        # A newcomer on the restarted node sees no ghost, and stays consistent after
        # further heartbeat and reap rounds.
        newcomer = await clients.connect(again)
        roster = await newcomer.join_presence(ROOM, "newcomer")
        assert sorted(roster["ids"]) == ["alice", "newcomer"]
        await alice.expect("pusher_internal:member_added", ROOM)
        await hooks.exactly_once(
            ("member_removed", ROOM, "ghost"), ("channel_vacated", "ghost-town")
        )
        await poll(
            lambda: user_ids(survivor, ROOM),
            lambda ids: ids == {"alice", "newcomer"},
            what="roster after the restart",
        )
        await alice.assert_silent("pusher_internal:member_added", within=LEASE)
        assert await user_ids(again, ROOM) == {"alice", "newcomer"}
        assert hooks.count("member_added", ROOM, "ghost") == 1  # only its original join


async def test_graceful_stop_announces_departures_at_once(cluster: Cluster) -> None:
    stays, leaves = await cluster.node(hook="stays"), await cluster.node(hook="leaves")
    hooks = await cluster.hooks()
    async with Clients() as clients:
        alice = await clients.connect(stays)
        await alice.join_presence(ROOM, "alice")
        bob = await clients.connect(leaves)
        await bob.join_presence(ROOM, "bob")
        await bob.subscribe("bobs-channel")
        await alice.expect("pusher_internal:member_added", ROOM)
        stopping = asyncio.ensure_future(cluster.stop(leaves))
        assert await bob.expect_closed() == 4200  # reconnect elsewhere
        await stopping
        # Well before the lease could have run out: the leaving node said goodbye.
        frame = await alice.expect("pusher_internal:member_removed", ROOM, within=LEASE / 2)
        assert data_of(frame) == {"user_id": "bob"}
        assert await user_ids(stays, ROOM) == {"alice"}
        await hooks.exactly_once(
            ("member_removed", ROOM, "bob"), ("channel_vacated", "bobs-channel")
        )


def watchlist(frame: Frame) -> list[tuple[str, list[str]]]:
    assert frame["event"] == "pusher_internal:watchlist_events", frame
    return [(e["name"], e["user_ids"]) for e in data_of(frame)["events"]]


async def test_killed_node_releases_users_counts_and_quota(cluster: Cluster) -> None:
    """Reaping also says the dead node's users went offline (watchlists), lowers
    subscription counts, and frees its share of the app's connection quota."""
    options: dict[str, Any] = {
        "enable_watchlist_events": True,
        "enable_subscription_count": True,
        "max_connections": 3,
    }
    survivor = await cluster.node(apps=[await cluster.app(**options)])
    doomed = await cluster.spawn("doomed", apps=[await cluster.app(**options)])
    async with Clients() as clients:
        watcher = await clients.connect(survivor)
        await watcher.signin({"id": "w", "watchlist": ["x"]})
        assert watchlist(await watcher.expect_next("pusher_internal:watchlist_events")) == [
            ("offline", ["x"])
        ]
        counter = await clients.connect(survivor)
        await counter.subscribe("counted")
        await counter.expect("pusher_internal:subscription_count", "counted")
        victim = await clients.connect(doomed)
        await victim.signin({"id": "x"})
        assert watchlist(await watcher.expect_next("pusher_internal:watchlist_events")) == [
            ("online", ["x"])
        ]
        await victim.subscribe("counted")
        frame = await counter.expect("pusher_internal:subscription_count", "counted")
        assert data_of(frame) == {"subscription_count": 2}
        refused = await clients.open(survivor)  # 3 of 3 connections are in use
        await refused.expect_error(CloseCode.OVER_QUOTA)

        await doomed.kill()
        frame = await watcher.expect(
            "pusher_internal:watchlist_events", within=REAPED_WITHIN + MARGIN
        )
        assert watchlist(frame) == [("offline", ["x"])]
        frame = await counter.expect("pusher_internal:subscription_count", "counted")
        assert data_of(frame) == {"subscription_count": 1}
        admitted = await clients.connect(survivor)  # the dead node's quota is free again
        await admitted.ping()
        # Exactly once: no second offline after further reap rounds.
        await watcher.assert_silent("pusher_internal:watchlist_events", within=LEASE)


async def test_paused_node_loses_its_lease_and_rebuilds(cluster: Cluster) -> None:
    """A node that stops running for longer than its lease (SIGSTOP: a stalled process) is
    reaped like a dead one; when it runs again it finds its lease lost and re-registers
    everything it still holds, which is announced as fresh joins."""
    survivor = await cluster.node(hook="survivor")
    sleeper = await cluster.spawn("sleeper", hook="sleeper")
    hooks = await cluster.hooks()
    async with Clients() as clients:
        alice = await clients.connect(survivor)
        await alice.join_presence(ROOM, "alice")
        dreamer = await clients.connect(sleeper)
        await dreamer.join_presence(ROOM, "dreamer", {"asleep": False})
        await dreamer.subscribe("dreams")
        await alice.expect("pusher_internal:member_added", ROOM)
        await hooks.wait_for("channel_occupied", "dreams")

        os.kill(sleeper.pid, signal.SIGSTOP)
        try:
            frame = await alice.expect(
                "pusher_internal:member_removed", ROOM, within=REAPED_WITHIN + MARGIN
            )
            assert data_of(frame) == {"user_id": "dreamer"}
            assert await user_ids(survivor, ROOM) == {"alice"}
        finally:
            os.kill(sleeper.pid, signal.SIGCONT)
        frame = await alice.expect(
            "pusher_internal:member_added", ROOM, within=REAPED_WITHIN + MARGIN
        )
        assert data_of(frame) == {"user_id": "dreamer", "user_info": {"asleep": False}}
        for node in (survivor, sleeper):
            await poll(
                partial(user_ids, node, ROOM),
                lambda ids: ids == {"alice", "dreamer"},
                what="the sleeper's member back",
            )
            assert "dreams" in await channel_names(node)
        # The resumed node works as a cluster member again, both ways.
        await trigger(survivor, "dreams", "wake-up", "{}")
        await dreamer.expect("wake-up", "dreams")
        await dreamer.send("client-yawn", {}, channel=ROOM)
        await alice.expect("client-yawn", ROOM)
        newcomer = await clients.connect(survivor)
        roster = await newcomer.join_presence(ROOM, "newcomer")
        assert roster["hash"] == {"alice": None, "dreamer": {"asleep": False}, "newcomer": None}
        # Webhooks: the reaper's removals and the rebuild's re-joins are both sent, or (if
        # the rebuild came within the grace period) neither; never only one side.
        await hooks.settle()
        assert (
            hooks.count("channel_occupied", "dreams") - hooks.count("channel_vacated", "dreams")
            == 1
        ), hooks.events
        assert (
            hooks.count("member_added", ROOM, "dreamer")
            - hooks.count("member_removed", ROOM, "dreamer")
            == 1
        ), hooks.events


async def test_paused_node_members_still_see_themselves(cluster: Cluster) -> None:
    survivor = await cluster.node()
    sleeper = await cluster.spawn("sleeper")
    async with Clients() as clients:
        alice = await clients.connect(survivor)
        await alice.join_presence(ROOM, "alice")
        dreamer = await clients.connect(sleeper)
        await dreamer.join_presence(ROOM, "dreamer")
        await alice.expect("pusher_internal:member_added", ROOM)
        os.kill(sleeper.pid, signal.SIGSTOP)
        try:
            await alice.expect(
                "pusher_internal:member_removed", ROOM, within=REAPED_WITHIN + MARGIN
            )
        finally:
            os.kill(sleeper.pid, signal.SIGCONT)
        await alice.expect("pusher_internal:member_added", ROOM, within=REAPED_WITHIN + MARGIN)
        await trigger(survivor, ROOM, "sentinel", "{}")
        for client in (alice, dreamer):
            await client.expect("sentinel", ROOM)
        assert roster_seen_by(alice, ROOM) == {"alice", "dreamer"}
        assert roster_seen_by(dreamer, ROOM) == {"alice", "dreamer"}
