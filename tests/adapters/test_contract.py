"""The Membership / Broker contract (kanal.adapters.base), run on every implementation.

Ownership rule: one suite states the seam's contract; each ``cluster`` parameter (memory,
redis) must pass all of it unchanged. A "node" is what one kanal process sees: several
``RedisMembership`` instances with their own connections to one Redis, or the one memory
store (a single process is the whole cluster there). Tests after the "Redis only" banner
cover what only the Redis adapter has: leases, reaping, rebuild, reconnection, key layout.

Cache expiry is tested through ``now`` (both adapters honour the caller's clock, the Redis
one also the key's real PTTL, whichever ends first); one Redis test checks that the real
PEXPIRE is set and bounds the answer.
Waiting is always on a condition or event with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis
import redis.exceptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kanal.adapters.base import Broker, ChannelCounts, Envelope, JoinResult, Membership
from kanal.adapters.memory import MemoryMembership
from kanal.adapters.redis import (
    Departure,
    NodeState,
    RebuildResult,
    RedisBroker,
    RedisMembership,
    decode_envelope,
    encode_envelope,
)
from kanal.adapters.redis_wire import decode_message, encode_batch
from kanal.protocol.presence import Member
from tests.redis_server import RedisProcess
from tests.redis_server import client as redis_client

from .conftest import Cluster

APP = "1"
OTHER_APP = "2"
ALICE = Member("alice", {"name": "Alice", "tab": 1})
ALICE_2 = Member("alice", {"name": "Alice", "tab": 2})
BOB = Member("bob", None)
CAROL = Member("carol", [1, "two", {"3": 4.5}])


# --- channels: first / last -----------------------------------------------------------


async def test_first_join_occupies_and_last_leave_vacates(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    first = await a.join(APP, "chat", "1.1", None, 0)
    assert first == JoinResult(False, True, False, 1, None)
    second = await b.join(APP, "chat", "2.1", None, 0)
    assert second == JoinResult(False, False, False, 2, None)
    left = await a.leave(APP, "chat", "1.1")
    assert left is not None and (left.vacated, left.subscription_count) == (False, 1)
    assert not left.is_presence and left.user_removed is None
    last = await b.leave(APP, "chat", "2.1")
    assert last is not None and (last.vacated, last.subscription_count) == (True, 0)
    assert await a.join(APP, "chat", "1.2", None, 0) == JoinResult(False, True, False, 1, None)


async def test_leave_of_an_absent_socket_is_none(cluster: Cluster) -> None:
    node = cluster.node()
    assert await node.leave(APP, "chat", "1.1") is None
    await node.join(APP, "chat", "1.1", None, 0)
    assert await node.leave(APP, "chat", "9.9") is None
    assert await node.leave(APP, "chat", "1.1") is not None
    assert await node.leave(APP, "chat", "1.1") is None


async def test_double_join_is_a_no_op_returning_current_state(cluster: Cluster) -> None:
    node = cluster.node()
    await node.join(APP, "presence-room", "1.1", ALICE, 0)
    await node.join(APP, "presence-room", "1.2", BOB, 0)
    again = await node.join(APP, "presence-room", "1.1", ALICE, 0)
    assert again == JoinResult(False, False, False, 2, {"alice": ALICE.user_info, "bob": None})
    assert await node.counts(APP, "presence-room") == ChannelCounts(2, 2)
    plain = await node.join(APP, "chat", "1.1", None, 0)
    assert await node.join(APP, "chat", "1.1", None, 0) == JoinResult(False, False, False, 1, None)
    assert plain.occupied


async def test_presence_member_added_and_removed_only_for_first_and_last(
    cluster: Cluster,
) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    joined = await a.join(APP, "presence-room", "1.1", ALICE, 0)
    assert (joined.occupied, joined.user_added) == (True, True)
    assert joined.presence == {"alice": ALICE.user_info}
    tab = await b.join(APP, "presence-room", "2.1", ALICE_2, 0)
    assert (tab.occupied, tab.user_added, tab.subscription_count) == (False, False, 2)
    bob = await b.join(APP, "presence-room", "2.2", BOB, 0)
    assert bob.user_added and bob.presence == {"alice": ALICE.user_info, "bob": None}
    left = await a.leave(APP, "presence-room", "1.1")
    assert left is not None and left.user_removed is None and left.is_presence
    left = await b.leave(APP, "presence-room", "2.1")
    assert left is not None and left.user_removed == "alice" and not left.vacated
    left = await b.leave(APP, "presence-room", "2.2")
    assert left is not None and left.user_removed == "bob" and left.vacated


async def test_roster_shows_the_earliest_remaining_connection_of_each_user(
    cluster: Cluster,
) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    assert await a.roster(APP, "presence-room") == {}
    await a.join(APP, "presence-room", "1.1", ALICE, 0)
    await b.join(APP, "presence-room", "2.1", ALICE_2, 0)
    third = Member("alice", {"name": "Alice", "tab": 3})
    joined = await a.join(APP, "presence-room", "1.2", third, 0)
    assert joined.presence == {"alice": ALICE.user_info}
    assert await b.roster(APP, "presence-room") == joined.presence
    await a.leave(APP, "presence-room", "1.1")
    joined = await b.join(APP, "presence-room", "2.2", CAROL, 0)
    assert joined.presence == {"alice": ALICE_2.user_info, "carol": CAROL.user_info}
    assert await a.roster(APP, "presence-room") == joined.presence
    await a.join(APP, "chat", "1.3", None, 0)
    assert await a.roster(APP, "chat") == {}  # not a presence channel


async def test_max_users_refuses_a_new_user_and_records_nothing(cluster: Cluster) -> None:
    node = cluster.node()
    assert not (await node.join(APP, "presence-room", "1.1", ALICE, 2)).refused
    assert not (await node.join(APP, "presence-room", "1.2", BOB, 2)).refused
    refused = await node.join(APP, "presence-room", "1.3", CAROL, 2)
    assert refused.refused and not refused.occupied and not refused.user_added
    assert refused.presence is None
    assert await node.counts(APP, "presence-room") == ChannelCounts(2, 2)
    assert sorted(await node.users(APP, "presence-room")) == ["alice", "bob"]
    assert await node.leave(APP, "presence-room", "1.3") is None
    tab = await node.join(APP, "presence-room", "1.4", ALICE_2, 2)  # known user: allowed
    assert not tab.refused and tab.subscription_count == 3
    unlimited = await node.join(APP, "presence-room", "1.5", CAROL, 0)
    assert not unlimited.refused and unlimited.user_added


async def test_counts_and_users(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    assert await a.counts(APP, "presence-room") == ChannelCounts(0, 0)
    assert await a.users(APP, "presence-room") == []
    await a.join(APP, "presence-room", "1.1", ALICE, 0)
    await b.join(APP, "presence-room", "2.1", ALICE_2, 0)
    await b.join(APP, "presence-room", "2.2", BOB, 0)
    await b.join(APP, "chat", "2.2", None, 0)
    assert await a.counts(APP, "presence-room") == ChannelCounts(3, 2)
    assert await b.counts(APP, "chat") == ChannelCounts(1, 0)
    assert sorted(await b.users(APP, "presence-room")) == ["alice", "bob"]
    assert await a.counts(OTHER_APP, "presence-room") == ChannelCounts(0, 0)


async def test_channels_lists_occupied_channels_by_prefix(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    await a.join(APP, "presence-room", "1.1", ALICE, 0)
    await b.join(APP, "presence-room", "2.1", BOB, 0)
    await a.join(APP, "private-x", "1.1", None, 0)
    await b.join(APP, "private-y", "2.1", None, 0)
    await b.join(APP, "chat", "2.1", None, 0)
    await a.join(OTHER_APP, "private-z", "1.1", None, 0)
    await a.join(APP, "private-gone", "1.1", None, 0)
    await a.leave(APP, "private-gone", "1.1")
    assert await a.channels(APP, "private-") == {
        "private-x": ChannelCounts(1, 0),
        "private-y": ChannelCounts(1, 0),
    }
    everything = await b.channels(APP, "")
    assert set(everything) == {"presence-room", "private-x", "private-y", "chat"}
    assert everything["presence-room"] == ChannelCounts(2, 2)
    assert await a.channels(APP, "presence-") == {"presence-room": ChannelCounts(2, 2)}
    assert await a.channels(APP, "nothing-") == {}
    assert await a.channels(OTHER_APP, "") == {"private-z": ChannelCounts(1, 0)}


# --- signed-in users (users.md §4) ----------------------------------------------------


async def test_sign_in_and_out_answer_first_and_last(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    assert await a.sign_in(APP, "alice", "1.1")
    assert not await b.sign_in(APP, "alice", "2.1")
    assert not await a.sign_in(APP, "alice", "1.1")  # same socket again
    assert not await a.sign_out(APP, "alice", "1.1")
    assert not await a.sign_out(APP, "alice", "1.1")  # already gone
    assert not await a.sign_out(APP, "bob", "2.1")  # never signed in as bob
    assert await b.sign_out(APP, "alice", "2.1")
    assert await a.sign_in(APP, "alice", "1.2")


async def test_online(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    await a.sign_in(APP, "alice", "1.1")
    await b.sign_in(APP, "bob", "2.1")
    await b.sign_in(OTHER_APP, "carol", "2.2")
    assert await a.online(APP, ["alice", "bob", "carol", "dave"]) == {"alice", "bob"}
    assert await a.online(APP, []) == set()
    assert await a.online(APP, iter(["alice", "alice"])) == {"alice"}
    await b.sign_out(APP, "bob", "2.1")
    assert await a.online(APP, ["alice", "bob"]) == {"alice"}


# --- cache channels (channels.md §5) --------------------------------------------------


async def test_cache_put_get_ttl_and_expiry(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    now = time.time()
    assert await a.cache_get(APP, "cache-x", now) is None
    await a.cache_put(APP, "cache-x", "ev", '{"n":1}', 60, now)
    hit = await b.cache_get(APP, "cache-x", now + 15)
    assert hit is not None and (hit.event, hit.data, hit.ttl) == ("ev", '{"n":1}', 45)
    last_second = await b.cache_get(APP, "cache-x", now + 59.5)
    assert last_second is not None and last_second.ttl == 1
    assert await b.cache_get(APP, "cache-x", now + 60) is None
    assert await b.cache_get(APP, "cache-y", now) is None
    assert await b.cache_get(OTHER_APP, "cache-x", now) is None


async def test_cache_put_replaces_the_event_and_restarts_the_ttl(cluster: Cluster) -> None:
    node = cluster.node()
    now = time.time()
    await node.cache_put(APP, "cache-x", "old", "1", 30, now)
    await node.cache_put(APP, "cache-x", "new", "2", 30, now + 20)
    hit = await node.cache_get(APP, "cache-x", now + 40)
    assert hit is not None and (hit.event, hit.data, hit.ttl) == ("new", "2", 10)


async def test_cache_miss_claim_is_once_per_window_cluster_wide(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    now = time.time()
    assert await a.claim_cache_miss(APP, "cache-x", 30, now)
    assert not await b.claim_cache_miss(APP, "cache-x", 30, now + 1)
    assert await b.claim_cache_miss(APP, "cache-y", 30, now + 1)
    assert await b.claim_cache_miss(OTHER_APP, "cache-x", 30, now + 1)


# --- connection quota -----------------------------------------------------------------


async def test_add_connection_enforces_the_limit_cluster_wide(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    assert await a.add_connection(APP, "1.1", 2)
    assert await b.add_connection(APP, "2.1", 2)
    assert not await b.add_connection(APP, "2.2", 2)
    assert await a.add_connection(APP, "1.1", 2)  # already counted: still admitted
    assert await a.add_connection(OTHER_APP, "1.2", 2)  # quotas are per app
    await a.remove_connection(APP, "1.1")
    await a.remove_connection(APP, "1.1")  # idempotent
    await a.remove_connection(APP, "7.7")
    assert await b.add_connection(APP, "2.2", 2)
    assert await a.connection_count(APP) == await b.connection_count(APP) == 2
    assert await b.connection_count(OTHER_APP) == 1
    assert await a.connection_count("no-such-app") == 0
    assert not await a.add_connection(APP, "1.3", 2)
    assert await a.add_connection(APP, "1.3", 0)  # 0 = no limit


# --- concurrency: one answer for the whole cluster ------------------------------------


async def test_concurrent_joins_from_many_nodes_occupy_once(cluster: Cluster) -> None:
    nodes = [cluster.node(f"n{i}") for i in range(12)]
    joins = await asyncio.gather(
        *(node.join(APP, "chat", f"{i}.1", None, 0) for i, node in enumerate(nodes))
    )
    assert sum(j.occupied for j in joins) == 1
    assert sorted(j.subscription_count for j in joins) == list(range(1, 13))
    leaves = await asyncio.gather(
        *(node.leave(APP, "chat", f"{i}.1") for i, node in enumerate(nodes))
    )
    assert sum(1 for left in leaves if left is not None and left.vacated) == 1


async def test_concurrent_first_connections_of_a_user_add_it_once(cluster: Cluster) -> None:
    nodes = [cluster.node(f"n{i}") for i in range(12)]
    joins = await asyncio.gather(
        *(node.join(APP, "presence-r", f"{i}.1", ALICE, 0) for i, node in enumerate(nodes))
    )
    assert sum(j.user_added for j in joins) == 1
    assert sum(j.occupied for j in joins) == 1
    firsts = await asyncio.gather(
        *(node.sign_in(APP, "alice", f"{i}.1") for i, node in enumerate(nodes))
    )
    assert sum(firsts) == 1
    lasts = await asyncio.gather(
        *(node.sign_out(APP, "alice", f"{i}.1") for i, node in enumerate(nodes))
    )
    assert sum(lasts) == 1


async def test_user_added_and_removed_alternate_under_concurrent_churn(
    cluster: Cluster,
) -> None:
    """Two nodes hold the same user; every round both join, then both leave, at once.

    Each round must yield exactly one user_added and then exactly one user_removed (and one
    occupied / vacated), so over the run the two strictly alternate.
    """
    a, b = cluster.node("a"), cluster.node("b")
    history: list[str] = []
    for round_ in range(25):
        joins = await asyncio.gather(
            a.join(APP, "presence-r", f"1.{round_}", ALICE, 0),
            b.join(APP, "presence-r", f"2.{round_}", ALICE_2, 0),
        )
        history += ["added"] * sum(j.user_added for j in joins)
        history += ["occupied"] * sum(j.occupied for j in joins)
        leaves = await asyncio.gather(
            b.leave(APP, "presence-r", f"2.{round_}"),
            a.leave(APP, "presence-r", f"1.{round_}"),
        )
        history += ["removed"] * sum(1 for x in leaves if x and x.user_removed == "alice")
        history += ["vacated"] * sum(1 for x in leaves if x and x.vacated)
    assert history == ["added", "occupied", "removed", "vacated"] * 25


async def test_free_running_churn_balances(cluster: Cluster) -> None:
    """Joins and leaves of one user race freely on two nodes; the tallies must balance."""
    a, b = cluster.node("a"), cluster.node("b")
    tally: Counter[str] = Counter()

    async def churn(node: Membership, sid_prefix: str, member: Member) -> None:
        for i in range(40):
            sid = f"{sid_prefix}.{i}"
            joined = await node.join(APP, "presence-r", sid, member, 0)
            tally["added"] += joined.user_added
            tally["occupied"] += joined.occupied
            left = await node.leave(APP, "presence-r", sid)
            assert left is not None
            tally["removed"] += left.user_removed is not None
            tally["vacated"] += left.vacated

    await asyncio.gather(churn(a, "1", ALICE), churn(b, "2", ALICE_2))
    assert tally["added"] == tally["removed"] >= 1
    assert tally["occupied"] == tally["vacated"] >= 1
    assert await a.counts(APP, "presence-r") == ChannelCounts(0, 0)


async def test_concurrent_connections_respect_the_limit(cluster: Cluster) -> None:
    nodes = [cluster.node(f"n{i}") for i in range(4)]
    admitted = await asyncio.gather(
        *(nodes[i % 4].add_connection(APP, f"{i}.1", 5) for i in range(20))
    )
    assert sum(admitted) == 5


# --- differential: Redis answers exactly what the memory reference answers ----------------

_SOCKETS = ["1.1", "1.2", "2.1", "2.2"]
_MEMBERS = [None, ALICE, ALICE_2, BOB, CAROL]
_OPS = st.one_of(
    st.tuples(
        st.just("join"),
        st.sampled_from(["presence-a", "presence-b"]),
        st.sampled_from(_SOCKETS),
        st.sampled_from(_MEMBERS[1:]),
        st.integers(0, 2),
    ),
    st.tuples(st.just("join"), st.just("chat"), st.sampled_from(_SOCKETS), st.none(), st.just(0)),
    st.tuples(
        st.just("leave"),
        st.sampled_from(["presence-a", "presence-b", "chat"]),
        st.sampled_from(_SOCKETS),
    ),
    st.tuples(
        st.sampled_from(["sign_in", "sign_out"]),
        st.sampled_from(["alice", "bob"]),
        st.sampled_from(_SOCKETS),
    ),
    st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(_SOCKETS), st.integers(0, 2)),
)


async def _apply(node: Membership, op: tuple[Any, ...]) -> object:
    name = op[0]
    if name == "join":
        return await node.join(APP, op[1], op[2], op[3], op[4])
    if name == "leave":
        return await node.leave(APP, op[1], op[2])
    if name == "sign_in":
        return await node.sign_in(APP, op[1], op[2])
    if name == "sign_out":
        return await node.sign_out(APP, op[1], op[2])
    if name == "add":
        return await node.add_connection(APP, op[1], op[2])
    await node.remove_connection(APP, op[1])
    return None


async def _observe(node: Membership) -> object:
    return (
        await node.channels(APP, ""),
        {c: sorted(await node.users(APP, c)) for c in ("presence-a", "presence-b")},
        {c: await node.roster(APP, c) for c in ("presence-a", "presence-b")},
        await node.online(APP, ["alice", "bob"]),
    )


@pytest.mark.redis
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_OPS, max_size=25))
def test_redis_matches_memory_on_random_histories(
    ops: list[tuple[Any, ...]], redis_url: str
) -> None:
    async def run() -> None:
        cluster = Cluster("redis", redis_url, f"kt:diff:{time.monotonic_ns()}:")
        reference, nodes = MemoryMembership(), [cluster.redis_node("a"), cluster.redis_node("b")]
        try:
            for i, op in enumerate(ops):
                # A socket lives on one node: the first digit of its id says which.
                sid = op[1] if op[0] in ("add", "remove") else op[2]
                node = nodes[int(sid[0]) - 1]
                assert await _apply(node, op) == await _apply(reference, op), op
                if i % 5 == 4:
                    assert await _observe(nodes[0]) == await _observe(reference)
            assert await _observe(nodes[1]) == await _observe(reference)
        finally:
            await cluster.close()

    asyncio.run(run())


# --- broker ----------------------------------------------------------------------------


class CountingBroker(RedisBroker):
    """Signals once the reader has failed ``wanted`` times in a row."""

    def __init__(self, url: str, wanted: int) -> None:
        super().__init__(url, prefix="kt:fault:", backoff=(0.05, 0.2))
        self.wanted = wanted
        self.retried = asyncio.Event()

    def _set_down(self, exc: BaseException) -> None:
        super()._set_down(exc)
        if self.failures >= self.wanted:
            self.retried.set()


class Inbox:
    """Collects what one node's broker delivers; wakes a waiter once enough arrived."""

    def __init__(self, expected: int) -> None:
        self.items: list[Envelope] = []
        self._expected = expected
        self.full = asyncio.Event()

    def __call__(self, envelope: Envelope) -> None:
        self.items.append(envelope)
        if len(self.items) >= self._expected:
            self.full.set()


def _envelopes(channel: str, count: int) -> list[Envelope]:
    big = b'"' + b"x" * 70_000 + b'"'
    out = []
    for i in range(count):
        payload = orjson.dumps({"event": "e", "channel": channel, "data": f"{i} é ☃"})
        if i == 3:
            payload = b'{"data":' + big + b"}"
        if i == 4:
            payload = b"\x00\xff not json at all \x00"
        exclude = f"{i}.9" if i % 3 == 0 else None
        out.append(Envelope(APP, "channel", channel, payload, exclude))
    return out


async def test_every_node_receives_every_envelope_once_in_publish_order(
    cluster: Cluster,
) -> None:
    brokers = await cluster.brokers(3)
    sent = {"room-a": _envelopes("room-a", 40), "room-b": _envelopes("room-b", 40)}
    sent["user"] = [Envelope(OTHER_APP, "user", "bøb", b"{}", "1.1")]
    total = sum(len(v) for v in sent.values())
    inboxes = [Inbox(total) for _ in brokers]
    for broker, inbox in zip(brokers, inboxes, strict=True):
        broker.attach(inbox)
        await broker.listen(APP, "channel", "room-a")
        await broker.listen(APP, "channel", "room-b")
        await broker.listen(OTHER_APP, "user", "bøb")

    async def publish_all(broker: Broker, envelopes: Sequence[Envelope]) -> None:
        for envelope in envelopes:
            await broker.publish(envelope)

    await asyncio.gather(
        publish_all(brokers[0], sent["room-a"]),
        publish_all(brokers[-1], sent["room-b"]),
        publish_all(brokers[len(brokers) // 2], sent["user"]),
    )
    async with asyncio.timeout(10):
        for inbox in inboxes:
            await inbox.full.wait()
    for inbox in inboxes:
        assert len(inbox.items) == total
        for channel, envelopes in sent.items():
            if channel == "user":
                got = [e for e in inbox.items if e.kind == "user"]
            else:
                got = [e for e in inbox.items if e.kind == "channel" and e.target == channel]
            assert got == envelopes  # order, payload bytes, exclude: all identical
    assert all(inbox.items == inboxes[0].items for inbox in inboxes)  # one order for all


async def test_concurrent_publishes_keep_call_order(cluster: Cluster) -> None:
    (broker, *_) = await cluster.brokers(1)
    envelopes = [Envelope(APP, "channel", "c", str(i).encode()) for i in range(200)]
    inbox = Inbox(len(envelopes))
    broker.attach(inbox)
    await broker.listen(APP, "channel", "c")
    await asyncio.gather(*(broker.publish(e) for e in envelopes))
    async with asyncio.timeout(10):
        await inbox.full.wait()
    assert inbox.items == envelopes


async def test_a_node_receives_what_it_listens_to_from_the_moment_it_is_done(
    cluster: Cluster,
) -> None:
    brokers = await cluster.brokers(2)
    publisher, listener = brokers[0], brokers[-1]  # memory: one node, both
    only_wanted = cluster.is_redis and cluster.fanout == "channel"
    inbox = Inbox(4 if only_wanted else 8)  # "node" and memory send everything
    listener.attach(inbox)
    if listener is not publisher:
        publisher.attach(Inbox(0))
    wanted = [
        Envelope(APP, "channel", "room", b"1"),
        Envelope(APP, "user", "u1", b"2"),
        Envelope(APP, "terminate", "u1", b""),
        Envelope(APP, "online", "u2", b""),
    ]
    await asyncio.gather(
        listener.listen(APP, "channel", "room"),
        listener.listen(APP, "user", "u1"),
        listener.listen(APP, "user", "u2"),
    )
    others = [
        Envelope(APP, "channel", "elsewhere", b"x"),
        Envelope(OTHER_APP, "channel", "room", b"x"),
        Envelope(APP, "user", "u3", b"x"),
    ]
    for first, second in zip([*others, others[0]], wanted, strict=True):
        await publisher.publish(first)
        await publisher.publish(second)
    async with asyncio.timeout(10):
        await inbox.full.wait()
    got = [e for e in inbox.items if e not in others]
    assert got == wanted
    assert inbox.items == wanted if only_wanted else len(inbox.items) == 8
    listener.unlisten(APP, "channel", "room")
    listener.unlisten(APP, "user", "u1")
    listener.unlisten(APP, "user", "u2")


# --- Redis only: wire format ------------------------------------------------------------

_TEXT = st.text(max_size=40)


@given(
    kind=st.sampled_from(["channel", "user", "terminate", "online", "offline"]),
    app_id=_TEXT,
    target=_TEXT,
    exclude=st.none() | _TEXT,
    payload=st.binary(max_size=300),
)
def test_envelope_wire_format_round_trips_with_the_payload_verbatim(
    kind: str, app_id: str, target: str, exclude: str | None, payload: bytes
) -> None:
    envelope = Envelope(app_id, kind, target, payload, exclude)
    message = encode_envelope(envelope)
    assert message.endswith(payload)
    assert decode_envelope(message) == envelope


@given(
    payloads=st.lists(st.binary(max_size=80), min_size=1, max_size=20),
    targets=st.lists(_TEXT, min_size=1, max_size=20),
)
def test_a_batch_message_carries_its_envelopes_in_order(
    payloads: list[bytes], targets: list[str]
) -> None:
    envelopes = [
        Envelope(APP, "channel", target, payload)
        for target, payload in zip(targets, payloads, strict=False)
    ]
    message = encode_batch([encode_envelope(e) for e in envelopes])
    assert decode_message(message) == envelopes  # a lone envelope travels unbatched


@pytest.mark.parametrize("message", [b"", b"\x03abc", b"\x01\x00\x05ab", b"\x01\xff\xff"])
def test_malformed_wire_messages_are_rejected(message: bytes) -> None:
    with pytest.raises(ValueError):
        decode_message(message)


@pytest.mark.parametrize("message", [b"\x02\x00\x00", b"\x02\x00\x00\x00\x09\x01"])
def test_truncated_batches_are_rejected(message: bytes) -> None:
    with pytest.raises(ValueError):
        decode_message(message)


# --- Redis only: leases, reaping, rebuild ---------------------------------------------


async def _populate(node: Membership, sid: str, member: Member) -> None:
    """One connection: counted, signed in, in a presence channel and a plain channel."""
    assert await node.add_connection(APP, sid, 0)
    await node.sign_in(APP, member.user_id, sid)
    await node.join(APP, "presence-room", sid, member, 0)
    await node.join(APP, f"private-{sid}", sid, None, 0)


def _summary(departures: Sequence[Departure]) -> set[tuple[str, str, str, str]]:
    """What the hub would announce: member_removed, channel_vacated, offline."""
    out: set[tuple[str, str, str, str]] = set()
    for d in departures:
        if d.leave is not None and d.leave.user_removed is not None:
            out.add(("member_removed", d.target, d.leave.user_removed, d.socket_id))
        if d.leave is not None and d.leave.vacated:
            out.add(("vacated", d.target, "", d.socket_id))
        if d.user_offline:
            out.add(("offline", d.target, "", d.socket_id))
    return out


async def test_a_dead_node_is_reaped_exactly_once(redis_cluster: Cluster) -> None:
    dead, b, c = (redis_cluster.redis_node(n, lease=30) for n in ("dead", "b", "c"))
    now = time.time()
    for node in (dead, b, c):
        assert await node.heartbeat(now)
    await _populate(dead, "1.1", ALICE)
    await _populate(dead, "1.2", BOB)
    await _populate(b, "2.1", ALICE_2)
    assert await b.reap_dead_nodes(now + 29) == []  # within the lease: nothing
    await b.heartbeat(now + 20)
    await c.heartbeat(now + 20)
    found = await asyncio.gather(b.reap_dead_nodes(now + 31), c.reap_dead_nodes(now + 31))
    departures = found[0] + found[1]
    assert [] in found  # one reaper claimed the lease, the other got nothing
    assert Counter((d.kind, d.target, d.socket_id) for d in departures) == Counter(
        {
            ("channel", "presence-room", "1.1"): 1,
            ("channel", "presence-room", "1.2"): 1,
            ("channel", "private-1.1", "1.1"): 1,
            ("channel", "private-1.2", "1.2"): 1,
            ("user", "alice", "1.1"): 1,
            ("user", "bob", "1.2"): 1,
        }
    )
    assert _summary(departures) == {
        ("member_removed", "presence-room", "bob", "1.2"),
        ("vacated", "private-1.1", "", "1.1"),
        ("vacated", "private-1.2", "", "1.2"),
        ("offline", "bob", "", "1.2"),
    }
    assert await b.counts(APP, "presence-room") == ChannelCounts(1, 1)
    assert await b.online(APP, ["alice", "bob"]) == {"alice"}
    assert await b.add_connection(APP, "2.2", 2)  # the dead node's connections are uncounted
    assert await b.reap_dead_nodes(now + 100) == []
    assert not await dead.heartbeat(now + 40)  # declared dead: must rebuild


async def test_a_crashed_reapers_claim_lapses(redis_cluster: Cluster, raw: aredis.Redis) -> None:
    dead, b = redis_cluster.redis_node("dead"), redis_cluster.redis_node("b")
    now = time.time()
    await dead.heartbeat(now)
    await b.heartbeat(now + 100)
    await _populate(dead, "1.1", ALICE)
    # A reaper claimed the lease (moved it to ``reaping``) and died before undoing anything.
    leases = f"{redis_cluster.prefix}{{nodes}}:leases"
    reaping = f"{redis_cluster.prefix}{{nodes}}:reaping"
    await raw.zrem(leases, dead.lease_id)
    await raw.zadd(reaping, {dead.lease_id: now + 60})
    assert not await dead.heartbeat(now + 10)  # being reaped: lost
    assert await b.reap_dead_nodes(now + 50) == []  # the claim still holds
    departures = await b.reap_dead_nodes(now + 61)
    assert ("member_removed", "presence-room", "alice", "1.1") in _summary(departures)
    assert await raw.zscore(reaping, dead.lease_id) is None


async def test_a_restarted_node_does_not_resurrect_stale_members(
    redis_cluster: Cluster,
) -> None:
    before = redis_cluster.redis_node("web-1")
    now = time.time()
    await before.heartbeat(now)
    await _populate(before, "1.1", ALICE)
    after = redis_cluster.redis_node("web-1")  # same node_id, new process
    assert after.lease_id != before.lease_id
    await after.heartbeat(now + 10)
    await after.join(APP, "presence-room", "1.9", CAROL, 0)
    assert await after.heartbeat(now + 25)
    departures = await after.reap_dead_nodes(now + 31)
    assert {d.socket_id for d in departures} == {"1.1"}
    assert ("member_removed", "presence-room", "alice", "1.1") in _summary(departures)
    assert await after.users(APP, "presence-room") == ["carol"]


async def test_forget_node_says_goodbye_and_leaves_no_keys(
    redis_cluster: Cluster, raw: aredis.Redis
) -> None:
    a, b = redis_cluster.redis_node("a"), redis_cluster.redis_node("b")
    await _populate(a, "1.1", ALICE)
    await _populate(b, "2.1", BOB)
    gone = await a.forget_node()
    assert _summary(gone) == {
        ("member_removed", "presence-room", "alice", "1.1"),
        ("vacated", "private-1.1", "", "1.1"),
        ("offline", "alice", "", "1.1"),
    }
    assert await b.users(APP, "presence-room") == ["bob"]
    gone = await b.forget_node()
    assert ("vacated", "presence-room", "", "2.1") in _summary(gone)
    assert [k async for k in raw.scan_iter(match=f"{redis_cluster.prefix}*")] == []


async def test_every_key_carries_a_cluster_hash_tag(
    redis_cluster: Cluster, raw: aredis.Redis
) -> None:
    node = redis_cluster.redis_node()
    await _populate(node, "1.1", ALICE)
    await node.join(OTHER_APP, "chat", "1.1", None, 0)
    await node.cache_put(APP, "cache-x", "e", "d", 60, time.time())
    keys = [k.decode() async for k in raw.scan_iter(match=f"{redis_cluster.prefix}*")]
    tags = {key[len(redis_cluster.prefix) :].split(":")[0] for key in keys}
    assert tags == {"{1}", "{2}", "{nodes}"}


def _state(*sockets: tuple[str, Member]) -> NodeState:
    return NodeState(
        subscriptions=[
            entry
            for sid, member in sockets
            for entry in (
                (APP, "presence-room", sid, member),
                (APP, f"private-{sid}", sid, None),
            )
        ],
        signed_in=[(APP, member.user_id, sid) for sid, member in sockets],
        connections=[(APP, sid) for sid, _ in sockets],
    )


async def test_rebuild_after_redis_lost_its_data(redis_cluster: Cluster, raw: aredis.Redis) -> None:
    a = redis_cluster.redis_node("a")
    now = time.time()
    await a.heartbeat(now)
    await _populate(a, "1.1", ALICE)
    await _populate(a, "1.2", ALICE_2)
    keys = [k async for k in raw.scan_iter(match=f"{redis_cluster.prefix}*")]
    await raw.delete(*keys)  # a Redis restart without persistence
    assert not await a.heartbeat(now + 10)
    result = await a.rebuild(_state(("1.1", ALICE), ("1.2", ALICE_2)), now + 10)
    assert result.departures == []
    added = {(x.kind, x.target, x.socket_id) for x in result.arrivals}
    assert ("user", "alice", "1.1") in added and ("user", "alice", "1.2") not in added
    joins = [x.join for x in result.arrivals if x.join is not None]
    assert sum(j.user_added for j in joins) == 1 and sum(j.occupied for j in joins) == 3
    assert await a.counts(APP, "presence-room") == ChannelCounts(2, 1)
    assert await a.online(APP, ["alice"]) == {"alice"}
    assert not await a.add_connection(APP, "1.3", 2)  # both connections counted again
    assert await a.heartbeat(now + 20)
    probe = redis_cluster.redis_node("probe")
    await probe.heartbeat(now + 45)
    assert await probe.reap_dead_nodes(now + 45) == []  # the rebuilt lease is alive
    gone = await probe.reap_dead_nodes(now + 51)
    removed = [e for e in _summary(gone) if e[0] == "member_removed"]
    assert len(removed) == 1 and removed[0][1:3] == ("presence-room", "alice")


async def test_rebuild_keeps_what_is_there_and_removes_what_is_stale(
    redis_cluster: Cluster,
) -> None:
    a, b = redis_cluster.redis_node("a"), redis_cluster.redis_node("b")
    now = time.time()
    await _populate(a, "1.1", ALICE)
    await _populate(a, "1.2", BOB)  # its close failed to reach Redis: stale
    await _populate(b, "2.1", CAROL)
    old_lease = a.lease_id
    result = await a.rebuild(_state(("1.1", ALICE)), now)
    assert result.arrivals == []
    assert _summary(result.departures) == {
        ("member_removed", "presence-room", "bob", "1.2"),
        ("vacated", "private-1.2", "", "1.2"),
        ("offline", "bob", "", "1.2"),
    }
    assert a.lease_id != old_lease
    assert sorted(await b.users(APP, "presence-room")) == ["alice", "carol"]
    assert (await a.rebuild(_state(("1.1", ALICE)), now)) == RebuildResult([], [])
    assert await a.leave(APP, "private-1.1", "1.1") is not None  # filed under the new lease
    gone = await a.forget_node()
    assert {d.socket_id for d in gone} == {"1.1"}


async def test_a_reaped_node_rebuilds_and_reappears(redis_cluster: Cluster) -> None:
    zombie, b = redis_cluster.redis_node("zombie"), redis_cluster.redis_node("b")
    now = time.time()
    await zombie.heartbeat(now)
    await b.heartbeat(now + 40)
    await _populate(zombie, "1.1", ALICE)
    reaped = await b.reap_dead_nodes(now + 31)  # a long pause made it look dead
    assert ("member_removed", "presence-room", "alice", "1.1") in _summary(reaped)
    assert not await zombie.heartbeat(now + 32)
    result = await zombie.rebuild(lambda: _state(("1.1", ALICE)), now + 32)
    assert result.departures == []
    assert {(x.kind, x.target) for x in result.arrivals} == {
        ("channel", "presence-room"),
        ("channel", "private-1.1"),
        ("user", "alice"),
    }
    assert all(x.join is None or x.join.occupied for x in result.arrivals)
    assert await b.users(APP, "presence-room") == ["alice"]
    assert await b.reap_dead_nodes(now + 40) == []


class FailingOnce(RedisMembership):
    """Fails once while removing stale entries, as if Redis went away mid-rebuild."""

    failed = False

    async def _empty_own(self, app_id: str, lease_id: str) -> list[Departure]:
        if not self.failed:
            self.failed = True
            raise redis.exceptions.ConnectionError("injected")
        return await super()._empty_own(app_id, lease_id)


async def test_an_interrupted_rebuild_is_completed_by_the_next(
    redis_cluster: Cluster, raw: aredis.Redis
) -> None:
    client = redis_client(redis_cluster.url)
    a = FailingOnce(client, prefix=redis_cluster.prefix, node_id="a")
    try:
        now = time.time()
        await _populate(a, "1.1", ALICE)
        await _populate(a, "1.2", BOB)  # stale
        with pytest.raises(redis.exceptions.ConnectionError):
            await a.rebuild(_state(("1.1", ALICE)), now)
        assert not await a.heartbeat(now + 1)  # unfinished: rebuild again
        result = await a.rebuild(_state(("1.1", ALICE)), now + 2)
        assert result.arrivals == []
        assert ("member_removed", "presence-room", "bob", "1.2") in _summary(result.departures)
        assert await a.heartbeat(now + 3)
        leases = f"{redis_cluster.prefix}{{nodes}}:leases"
        assert await raw.zrange(leases, 0, -1) == [a.lease_id.encode()]
        assert await a.users(APP, "presence-room") == ["alice"]
        assert {d.socket_id for d in await a.forget_node()} == {"1.1"}
    finally:
        await client.aclose()


async def test_rebuild_reads_the_state_after_writes_in_flight(redis_cluster: Cluster) -> None:
    node = redis_cluster.redis_node()
    local: list[str] = []

    async def join() -> None:
        await node.join(APP, "chat", "1.1", None, 0)
        local.append("1.1")  # the hub records a join once the store answered

    task = asyncio.create_task(join())
    await asyncio.sleep(0)  # let the join start and reach Redis first
    result = await node.rebuild(
        lambda: NodeState(subscriptions=[(APP, "chat", s, None) for s in local]), time.time()
    )
    assert task.done() and result.departures == [] and result.arrivals == []
    assert await node.counts(APP, "chat") == ChannelCounts(1, 0)


async def test_socket_ids_with_a_space_are_refused(redis_cluster: Cluster) -> None:
    node = redis_cluster.redis_node()
    with pytest.raises(ValueError, match="socket id"):
        await node.join(APP, "chat", "1 1", None, 0)


async def test_the_cache_key_really_expires(redis_cluster: Cluster, raw: aredis.Redis) -> None:
    """Redis's own clock bounds the entry too: a node whose clock runs behind (here by an
    hour) still sees at most the real remaining time, and the key carries a real PEXPIRE so
    Redis frees it (expiry itself is Redis's job; waiting for it would only slow the suite).
    """
    node = redis_cluster.redis_node()
    await node.cache_put(APP, "cache-x", "e", "d", 2, time.time())
    hit = await node.cache_get(APP, "cache-x", time.time() - 3600)
    assert hit is not None and hit.ttl <= 2  # not 3602
    key = f"{redis_cluster.prefix}{{{APP}}}:cache:cache-x"
    assert 1000 < await raw.pttl(key) <= 2000
    await raw.pexpireat(key, 1)  # a deadline in the past: what the Redis clock does later
    assert await node.cache_get(APP, "cache-x", time.time() - 3600) is None


# --- Redis only: faults -----------------------------------------------------------------


async def test_broker_reconnects_with_backoff_and_logs_once_per_outage(
    redis_process: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    broker = CountingBroker(redis_process.url, wanted=4)
    inbox = Inbox(1)
    broker.attach(inbox)
    caplog.set_level(logging.INFO, logger="kanal.redis")
    try:
        await broker.start()
        assert broker.healthy and broker.last_error == ""
        redis_process.stop()
        async with asyncio.timeout(5):
            await broker.wait_healthy(False)
        with pytest.raises(redis.exceptions.ConnectionError):
            await broker.publish(Envelope(APP, "channel", "c", b"lost"))
        async with asyncio.timeout(5):
            await broker.retried.wait()  # several reconnection attempts, one log line
        assert broker.last_error and not broker.healthy
        redis_process.start()
        async with asyncio.timeout(5):
            await broker.wait_healthy(True)
        await broker.publish(Envelope(APP, "channel", "c", b"back"))
        async with asyncio.timeout(5):
            await inbox.full.wait()
        assert inbox.items == [Envelope(APP, "channel", "c", b"back")]
    finally:
        await broker.close()
    lost = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lost) == 1 and "lost" in lost[0].getMessage()
    assert any("restored" in r.getMessage() for r in caplog.records)


async def test_membership_raises_redis_errors_while_redis_is_away(
    redis_process: RedisProcess,
) -> None:
    from kanal.adapters.redis import connect

    membership, broker = connect(redis_process.url, prefix="kt:fault:", node_id="a")
    try:
        assert (await membership.join(APP, "chat", "1.1", None, 0)).occupied
        redis_process.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await membership.join(APP, "chat", "1.2", None, 0)
        redis_process.start()
        assert not await membership.heartbeat(time.time())  # data lost: rebuild
        state = NodeState(subscriptions=[(APP, "chat", "1.1", None)])
        result = await membership.rebuild(state, time.time())
        assert [x.join.occupied for x in result.arrivals if x.join] == [True]
    finally:
        await membership.close()
        await broker.close()
