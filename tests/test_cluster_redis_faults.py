"""Redis faults: while Redis is away each node keeps serving its own connections and says so
on ``GET /ready``; once Redis is back the cluster rebuilds itself (issue item 5).

Two kinds of fault:

* Redis itself goes away: a private redis-server (:func:`tests.redis_server.redis_process`)
  is stopped and started again on the same port, and comes back empty, as after a crash
  without persistence (also: a node started while Redis is down, pub/sub connections killed).
* One node loses Redis while Redis keeps its data (a partition): that node reaches Redis
  through a :class:`tests.cluster_nodes.TcpProxy` the test cuts (connection refused) or
  freezes (no answer at all).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import pytest
import redis.asyncio as aredis

from tests.cluster_nodes import (
    LEASE,
    Cluster,
    channel_info,
    channel_names,
    cluster,
    faulty_cluster,
    member_events,
    poll,
    ready,
    roster_seen_by,
    user_ids,
)
from tests.conftest import RunningServer
from tests.redis_server import RedisProcess
from tests.wsclient import Clients, WsClient, data_of, trigger

__all__ = ["cluster", "faulty_cluster"]

pytestmark = pytest.mark.redis

ROOM = "presence-room"
# The pub/sub reader retries with backoff 1, 2, 4 s...: the outage below lasts about 1-2 s.
RECOVERY = 15.0
UNRESPONSIVE = 10.0  # the Redis client's socket timeout (5 s) plus slack
EXPECTED_ERRORS = (
    "redis unavailable, serving local connections only",
    "Redis pub/sub lost",
)


def unexpected_errors(records: list[logging.LogRecord]) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in records
        if r.levelno >= logging.ERROR
        and not any(r.getMessage().startswith(expected) for expected in EXPECTED_ERRORS)
    ]


async def delivered(sender: RunningServer, receiver: WsClient, channel: str) -> bool:
    """Trigger a probe event on ``sender``; did ``receiver`` get it within a short while?"""
    await trigger(sender, channel, "probe", "{}")
    try:
        await receiver.expect("probe", channel, within=0.5)
    except AssertionError:
        return False
    return True


async def test_nodes_survive_a_redis_outage_and_rebuild(
    faulty_cluster: tuple[Cluster, RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cluster, redis = faulty_cluster
    a, b = await cluster.nodes(2, apps=[await cluster.app(enable_watchlist_events=True)])
    async with Clients() as clients:
        on_a, on_b = await clients.connect(a), await clients.connect(b)
        await on_a.signin({"id": "ua"})
        await on_a.subscribe("news-a")
        await on_a.join_presence(ROOM, "ua", {"from": "a"})
        await on_b.subscribe("news-b")
        await on_b.join_presence(ROOM, "ub")
        await on_a.expect("pusher_internal:member_added", ROOM)
        assert {"news-a", "news-b", ROOM} <= set(await channel_names(b))

        redis.stop()
        for node in (a, b):
            _, body = await poll(
                partial(ready, node),
                lambda answer: answer[0] == 503,
                what="/ready to report the outage",
            )
            assert body["ready"] is False and "redis" in body["detail"].lower(), body

        # Local service goes on: triggers reach local subscribers, subscriptions succeed.
        await trigger(a, "news-a", "during", '{"n":1}')
        frame = await on_a.expect("during", "news-a")
        assert data_of(frame) == {"n": 1}
        newcomer = await clients.connect(a)
        await newcomer.subscribe("news-new")
        roster = await newcomer.join_presence(ROOM, "ua2")
        assert "ua2" in roster["ids"]
        await newcomer.send("client-hi", {}, channel=ROOM)
        await on_a.expect("client-hi", ROOM)
        assert "news-new" in await channel_names(a)  # answered from the local mirror

        redis.start()
        for node in (a, b):
            await poll(
                partial(ready, node),
                lambda answer: answer[0] == 200,
                within=RECOVERY,
                what="/ready back to 200",
            )
        # Membership rebuilt from every node's local state.
        want = {"news-a", "news-b", "news-new", ROOM}
        for node in (a, b):
            await poll(
                partial(channel_names, node),
                lambda listed: set(listed) == want,
                within=RECOVERY,
                what="channels rebuilt",
            )
            info = await channel_info(node, ROOM, "user_count,subscription_count")
            assert info == {"occupied": True, "user_count": 3, "subscription_count": 3}
            assert await user_ids(node, ROOM) == {"ua", "ub", "ua2"}
        late = await clients.connect(b)  # sees A's members with their user_info
        roster = await late.join_presence(ROOM, "late")
        assert roster["hash"] == {"ua": {"from": "a"}, "ub": None, "ua2": None, "late": None}
        await late.signin({"id": "watcher", "watchlist": ["ua", "nobody"]})  # sign-ins too
        frame = await late.expect("pusher_internal:watchlist_events")
        assert data_of(frame)["events"] == [
            {"name": "online", "user_ids": ["ua"]},
            {"name": "offline", "user_ids": ["nobody"]},
        ]

        # Cross-node delivery works again, both ways.
        await trigger(b, "news-a", "after", '{"n":2}')
        frame = await on_a.expect("after", "news-a")
        assert data_of(frame) == {"n": 2}
        await trigger(a, "news-b", "after", '{"n":3}')
        frame = await on_b.expect("after", "news-b")
        assert data_of(frame) == {"n": 3}
        await on_b.send("client-hi", {}, channel=ROOM)
        await newcomer.expect("client-hi", ROOM)

        # And cluster-wide answers are right again: a leave on A is seen on B.
        await newcomer.close()
        frame = await on_b.expect("pusher_internal:member_removed", ROOM)
        assert data_of(frame) == {"user_id": "ua2"}
    assert unexpected_errors(caplog.records) == []
    messages = [r.getMessage() for r in caplog.records]
    # A line when a node finds Redis gone and one when it is back (issue 17 item 3); a node
    # that asked Redis nothing during the outage has nothing to say.
    down = sum(m.startswith(EXPECTED_ERRORS[0]) for m in messages)
    back = [m for m in messages if m.startswith("redis is back after ")]
    assert down >= 1 and len(back) == down
    assert all(m.endswith(" s; rebuilding this node's entries") for m in back)
    lost = sum(m.startswith(EXPECTED_ERRORS[1]) for m in messages)
    restored = sum(m.startswith("Redis pub/sub restored after ") for m in messages)
    assert lost == restored == 2  # every node's subscription is lost and comes back


async def settled(clients: list[WsClient], via: RunningServer) -> None:
    """Every frame ``via`` sent or published to ``clients`` before now has arrived: a
    sentinel event triggered through it comes after them."""
    await trigger(via, ROOM, "sentinel", "{}")
    for client in clients:
        await client.expect("sentinel", ROOM)


async def test_members_who_left_during_an_outage_are_removed_everywhere(
    faulty_cluster: tuple[Cluster, RedisProcess],
) -> None:
    """Redis comes back empty, so no rebuild finds the departure; node A's reconciliation
    with Redis tells its clients (once)."""
    cluster, redis = faulty_cluster
    a, b = await cluster.nodes(2)
    async with Clients() as clients:
        on_a, on_b, leaver = [await clients.connect(node) for node in (a, b, b)]
        await on_a.join_presence(ROOM, "ua")
        await on_b.join_presence(ROOM, "ub")
        await leaver.join_presence(ROOM, "leaver")
        for user in ("ub", "leaver"):
            frame = await on_a.expect("pusher_internal:member_added", ROOM)
            assert data_of(frame)["user_id"] == user
        await on_b.expect("pusher_internal:member_added", ROOM)
        redis.stop()
        for node in (a, b):
            await poll(partial(ready, node), lambda answer: answer[0] == 503)
        await leaver.close()
        frame = await on_b.expect("pusher_internal:member_removed", ROOM)  # B's local answer
        assert data_of(frame) == {"user_id": "leaver"}
        redis.start()
        for node in (a, b):
            await poll(partial(ready, node), lambda answer: answer[0] == 200, within=RECOVERY)
            await poll(partial(user_ids, node, ROOM), lambda ids: ids == {"ua", "ub"})
        # Both nodes have rebuilt; a few more maintenance rounds may pass, not more.
        frame = await on_a.expect("pusher_internal:member_removed", ROOM, within=2 * LEASE)
        assert data_of(frame) == {"user_id": "leaver"}
        # Once, and nothing else: the reconciliation rounds end without another event.
        await on_a.assert_silent("pusher_internal:member_", within=2 * LEASE)
        await settled([on_a, on_b], b)
        assert member_events(on_a, ROOM) == [("added", "ub"), ("added", "leaver"),
                                             ("removed", "leaver")]  # fmt: skip
        assert member_events(on_b, ROOM) == [("added", "leaver"), ("removed", "leaver")]
        for client in (on_a, on_b):
            assert roster_seen_by(client, ROOM) == {"ua", "ub"}


async def test_members_who_joined_during_an_outage_are_added_everywhere(
    faulty_cluster: tuple[Cluster, RedisProcess],
) -> None:
    """A member that joins on B while Redis is down is announced on B only; once Redis is
    back, A's clients get member_added for it exactly once (from B's rebuild, or from A's
    reconciliation if A was not subscribed yet), with its user_info."""
    cluster, redis = faulty_cluster
    a, b = await cluster.nodes(2)
    async with Clients() as clients:
        on_a, on_b = await clients.connect(a), await clients.connect(b)
        await on_a.join_presence(ROOM, "ua")
        await on_b.join_presence(ROOM, "ub")
        await on_a.expect("pusher_internal:member_added", ROOM)
        redis.stop()
        for node in (a, b):
            await poll(partial(ready, node), lambda answer: answer[0] == 503)
        joiner = await clients.connect(b)
        roster = await joiner.join_presence(ROOM, "joiner", {"late": True})
        # B answers from its own view, which still shows A's member.
        assert roster["hash"] == {"ub": None, "joiner": {"late": True}, "ua": None}
        frame = await on_b.expect("pusher_internal:member_added", ROOM)
        assert data_of(frame) == {"user_id": "joiner", "user_info": {"late": True}}
        redis.start()
        for node in (a, b):
            await poll(partial(ready, node), lambda answer: answer[0] == 200, within=RECOVERY)
            await poll(partial(user_ids, node, ROOM), lambda ids: ids == {"ua", "ub", "joiner"})
        frame = await on_a.expect("pusher_internal:member_added", ROOM, within=2 * LEASE)
        assert data_of(frame) == {"user_id": "joiner", "user_info": {"late": True}}
        await on_a.assert_silent("pusher_internal:member_", within=2 * LEASE)
        everyone = [on_a, on_b, joiner]
        await settled(everyone, a)
        assert member_events(on_a, ROOM) == [("added", "ub"), ("added", "joiner")]
        assert member_events(on_b, ROOM) == [("added", "joiner")]
        assert member_events(joiner, ROOM) == []
        for client in everyone:
            assert roster_seen_by(client, ROOM) == {"ua", "ub", "joiner"}


async def test_webhooks_when_redis_came_back_empty(
    faulty_cluster: tuple[Cluster, RedisProcess],
) -> None:
    """What docs/scaling.md promises: reconciliation sends client events only. The leave
    during the outage is reported once (emitted by the node it happened on); the rebuild
    reports the members that stayed as arriving again (Redis lost them), as it always did."""
    cluster, redis = faulty_cluster
    a = await cluster.node(hook="a")
    b = await cluster.node(hook="b")
    hooks = await cluster.hooks()
    async with Clients() as clients:
        on_a, on_b, leaver = [await clients.connect(node) for node in (a, b, b)]
        await on_a.join_presence(ROOM, "ua")
        await on_b.join_presence(ROOM, "ub")
        await leaver.join_presence(ROOM, "leaver")
        for user in ("ua", "ub", "leaver"):
            await hooks.wait_for("member_added", ROOM, user)
        redis.stop()
        for node in (a, b):
            await poll(partial(ready, node), lambda answer: answer[0] == 503)
        await leaver.close()
        await on_b.expect("pusher_internal:member_removed", ROOM)
        redis.start()
        for node in (a, b):
            await poll(partial(ready, node), lambda answer: answer[0] == 200, within=RECOVERY)
        frame = await on_a.expect("pusher_internal:member_removed", ROOM, within=3 * LEASE)
        assert data_of(frame) == {"user_id": "leaver"}
        await hooks.wait_for("member_removed", ROOM, "leaver", within=RECOVERY)
        await hooks.settle(within=RECOVERY)
        assert hooks.count("member_removed", ROOM) == 1  # (the leader sends every webhook)
        for user in ("ua", "ub"):  # once at the join, once from the rebuild
            assert hooks.count("member_added", ROOM, user) == 2, hooks.events
        assert hooks.count("member_added", ROOM, "leaver") == 1


async def test_node_starts_while_redis_is_down(
    faulty_cluster: tuple[Cluster, RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    cluster, redis = faulty_cluster
    redis.stop()
    a = await cluster.node()
    status, body = await ready(a)
    assert status == 503 and "redis" in body["detail"].lower()
    async with Clients() as clients:
        early = await clients.connect(a)
        await early.join_presence(ROOM, "early")
        redis.start()
        await poll(lambda: ready(a), lambda answer: answer[0] == 200, within=RECOVERY)
        await poll(lambda: user_ids(a, ROOM), lambda ids: ids == {"early"}, within=RECOVERY)
        b = await cluster.node()
        other = await clients.connect(b)
        roster = await other.join_presence(ROOM, "other")
        assert sorted(roster["ids"]) == ["early", "other"]
        await early.expect("pusher_internal:member_added", ROOM)
    assert unexpected_errors(caplog.records) == []


async def test_subscriptions_killed_by_redis_come_back(
    faulty_cluster: tuple[Cluster, RedisProcess],
) -> None:
    """Redis drops only the pub/sub connections (CLIENT KILL TYPE pubsub, as on an output
    buffer overflow): each node subscribes again and cross-node delivery resumes."""
    cluster, redis = faulty_cluster
    a, b = await cluster.nodes(2)
    async with Clients() as clients:
        on_a, on_b = await clients.connect(a), await clients.connect(b)
        await on_a.subscribe("news")
        await on_b.subscribe("news")
        admin = aredis.Redis.from_url(redis.url)
        try:
            assert await admin.client_kill_filter(_type="pubsub") == 2
        finally:
            await admin.aclose()
        # Pub/sub is at most once: envelopes sent before a node has subscribed again are
        # lost for it, so try until one gets through (bounded).
        for sender, receiver in ((a, on_b), (b, on_a)):
            await poll(
                partial(delivered, sender, receiver, "news"),
                bool,
                within=RECOVERY,
                what="cross-node delivery again",
            )


# --- one node cut off from a Redis that keeps its data ------------------------------------


async def test_partitioned_node_is_reaped_then_rejoins(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Node A loses Redis for longer than its lease: B reaps it (its users leave, once);
    when A is back it rebuilds its entries and they are announced again."""
    proxy = await cluster.proxy()
    # B first: the first node sends the cluster's webhooks (a leader that is cut off is
    # replaced only when its webhook lease, 10 s, runs out).
    b = await cluster.node(hook="b")
    a = await cluster.node(hook="a", redis_url=proxy.url)
    hooks = await cluster.hooks()
    async with Clients() as clients:
        on_a, on_b = await clients.connect(a), await clients.connect(b)
        await on_a.join_presence(ROOM, "ua")
        await on_a.subscribe("a-only")
        await on_b.join_presence(ROOM, "ub")
        await on_a.expect("pusher_internal:member_added", ROOM)

        await proxy.cut()
        frame = await on_b.expect("pusher_internal:member_removed", ROOM, within=LEASE + 3)
        assert data_of(frame) == {"user_id": "ua"}
        assert await user_ids(b, ROOM) == {"ub"}
        assert "a-only" not in await channel_names(b)
        senders = await hooks.exactly_once(
            ("member_removed", ROOM, "ua"), ("channel_vacated", "a-only")
        )
        assert set(senders) == {"b"}
        status, _ = await ready(a)
        assert status == 503
        await trigger(a, "a-only", "local", "{}")  # A still serves its own clients
        await on_a.expect("local", "a-only")

        await proxy.restore()
        frame = await on_b.expect("pusher_internal:member_added", ROOM, within=RECOVERY)
        assert data_of(frame)["user_id"] == "ua"
        await poll(lambda: ready(a), lambda answer: answer[0] == 200, within=RECOVERY)
        for node in (a, b):
            assert await user_ids(node, ROOM) == {"ua", "ub"}
            assert {"a-only", ROOM} == set(await channel_names(node))
        await trigger(b, "a-only", "remote", "{}")
        await on_a.expect("remote", "a-only")
        await hooks.wait_for("channel_occupied", "a-only", count=2)
        await hooks.wait_for("member_added", ROOM, "ua", count=2)
    assert unexpected_errors(caplog.records) == []


async def test_short_blip_reconciles_what_changed_meanwhile(cluster: Cluster) -> None:
    """Node A loses Redis briefly (well within its lease): a member that left and one that
    joined on A meanwhile are announced to B once A has rebuilt its entries."""
    proxy = await cluster.proxy()
    a = await cluster.node(redis_url=proxy.url, lease=5.0)
    b = await cluster.node(lease=5.0)
    async with Clients() as clients:
        stays, leaves = await clients.connect(a), await clients.connect(a)
        await stays.join_presence(ROOM, "stays")
        await leaves.join_presence(ROOM, "leaves")
        watcher = await clients.connect(b)
        await watcher.join_presence(ROOM, "watcher")

        await proxy.cut()
        await leaves.close()
        await stays.expect("pusher_internal:member_removed", ROOM)  # A's local answer
        joins = await clients.connect(a)
        await joins.join_presence(ROOM, "joins")
        await proxy.restore()

        seen = {}
        for _ in range(2):
            frame = await watcher.expect(
                lambda f: f.get("event", "").startswith("pusher_internal:member_"),
                within=RECOVERY,
            )
            seen[data_of(frame)["user_id"]] = frame["event"]
        assert seen == {
            "leaves": "pusher_internal:member_removed",
            "joins": "pusher_internal:member_added",
        }
        for node in (a, b):
            assert await user_ids(node, ROOM) == {"stays", "joins", "watcher"}
        await trigger(a, ROOM, "sentinel", "{}")
        await watcher.expect("sentinel", ROOM)
        assert (
            not [  # "stays" never left
                f for f in watcher.skipped if data_of(f) == {"user_id": "stays"}
            ]
        )


async def test_unresponsive_redis_degrades_within_a_bound(cluster: Cluster) -> None:
    """Redis stops answering without closing anything (packets dropped): the node does not
    hang; it degrades to local service after the client's socket timeout."""
    proxy = await cluster.proxy()
    a = await cluster.node(redis_url=proxy.url)
    async with Clients() as clients:
        first = await clients.connect(a)
        await first.subscribe("before")
        proxy.freeze()

        async def newcomer() -> None:
            late = await clients.open(a)
            frame = await late.next_frame(within=UNRESPONSIVE)
            assert frame["event"] == "pusher:connection_established"
            late.socket_id = data_of(frame)["socket_id"]
            await late.send_subscribe("during")
            await late.expect("pusher_internal:subscription_succeeded", "during")

        async def local_trigger() -> None:  # publishing waits for the timeout too
            await asyncio.wait_for(trigger(a, "before", "local", "{}"), UNRESPONSIVE)
            await first.expect("local", "before")

        await asyncio.gather(newcomer(), local_trigger())
        status, body = await ready(a)
        assert status == 503 and "redis" in body["detail"].lower()
        await proxy.restore()
        await poll(lambda: ready(a), lambda answer: answer[0] == 200, within=RECOVERY)
        assert set(await channel_names(a)) == {"before", "during"}
