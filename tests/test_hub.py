"""The hub with the memory adapters and recording fake connections (no sockets).

Covers protocol.md §3 (cleanup exactly once), §8 (ordering: subscription_succeeded first),
channels.md §4 (member_added / member_removed exactly once per user, also under
interleavings) and the frame-once fan-out (the same bytes object for every subscriber).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import kanal.hub.subscription_count
from kanal.adapters.base import CachedEvent, ChannelCounts, JoinResult, LeaveResult
from kanal.adapters.memory import MemoryBroker, MemoryMembership
from kanal.config import App
from kanal.hub import Hub
from kanal.protocol import webhooks as hooks
from kanal.protocol.presence import Member
from kanal.protocol.signatures import sign_channel, sign_signin

APP = App(
    id="1",
    key="key",
    secret="secret",
    enable_client_messages=True,
    enable_subscription_count=True,
    enable_watchlist_events=True,
)
ROOM = "presence-room"


class FakeConnection:
    """Records everything the hub does to a connection."""

    def __init__(self, socket_id: str) -> None:
        self.socket_id = socket_id
        self.frames: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.probes = 0

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def probe(self) -> None:
        self.probes += 1

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def events(self) -> list[dict[str, Any]]:
        return [decode(frame) for frame in self.frames]

    def on(self, channel: str) -> list[str]:
        return [e["event"] for e in self.events() if e.get("channel") == channel]


def decode(frame: bytes) -> dict[str, Any]:
    assert frame[:1] == b"<" and frame[-1:] == b">"
    message: dict[str, Any] = orjson.loads(frame[1:-1])
    return message


class RecordingWebhooks:
    def __init__(self) -> None:
        self.events: list[hooks.WebhookEvent] = []

    def emit(self, app: App, event: hooks.WebhookEvent) -> None:
        self.events.append(event)

    def count(self, name: str) -> int:
        return sum(event.name == name for event in self.events)


class Harness:
    """A hub with a fake clock and a counting frame function; ``node`` prefixes its socket
    ids, so that several harnesses can share one membership store as cluster nodes."""

    def __init__(
        self, membership: Any = None, app: App = APP, broker: Any = None, node: str = ""
    ) -> None:
        self.app = app
        self.node = node
        self.now = 1000.0
        self.frame_calls = 0
        self.webhooks = RecordingWebhooks()
        self.hub = Hub(
            membership=membership or MemoryMembership(),
            broker=broker or MemoryBroker(),
            webhooks=self.webhooks,
            frame=self.frame,
            monotonic=lambda: self.now,
            wall=lambda: self.now,
        )
        self._next_id = 0

    def frame(self, payload: bytes) -> bytes:
        self.frame_calls += 1
        return b"<" + payload + b">"  # a new bytes object on every call

    async def connect(self) -> FakeConnection:
        self._next_id += 1
        conn = FakeConnection(f"{self.node}{self._next_id}.{self._next_id}")
        assert await self.hub.open(conn, self.app)
        return conn

    async def send(self, conn: FakeConnection, event: str, data: Any, **extra: Any) -> None:
        await self.hub.receive(conn.socket_id, json.dumps({"event": event, "data": data, **extra}))

    async def subscribe(
        self, conn: FakeConnection, channel: str, channel_data: str | None = None
    ) -> None:
        data: dict[str, Any] = {"channel": channel, "auth": ""}
        if channel.startswith(("private-", "presence-")):
            data["auth"] = sign_channel(
                app_key=self.app.key,
                app_secret=self.app.secret,
                socket_id=conn.socket_id,
                channel=channel,
                channel_data=channel_data,
            )
        if channel_data is not None:
            data["channel_data"] = channel_data
        await self.send(conn, "pusher:subscribe", data)

    async def join(self, conn: FakeConnection, user: str, info: Any = None) -> None:
        await self.subscribe(conn, ROOM, json.dumps({"user_id": user, "user_info": info}))

    async def signin(self, conn: FakeConnection, user: dict[str, Any]) -> None:
        user_data = json.dumps(user)
        auth = sign_signin(
            app_key=self.app.key,
            app_secret=self.app.secret,
            socket_id=conn.socket_id,
            user_data=user_data,
        )
        await self.send(conn, "pusher:signin", {"auth": auth, "user_data": user_data})


# --- §8 ordering ------------------------------------------------------------------------------


async def test_connection_established_is_the_first_frame() -> None:
    h = Harness()
    conn = await h.connect()
    assert [e["event"] for e in conn.events()] == ["pusher:connection_established"]


async def test_subscription_succeeded_precedes_cache_and_count() -> None:
    h = Harness()
    first = await h.connect()
    await h.subscribe(first, "cache-prices")
    assert first.on("cache-prices") == [
        "pusher_internal:subscription_succeeded",
        "pusher:cache_miss",
        "pusher_internal:subscription_count",
    ]
    await h.hub.publish_event(h.app, "cache-prices", "price", '{"v":1}', None)
    second = await h.connect()
    await h.subscribe(second, "cache-prices")
    assert second.on("cache-prices") == [
        "pusher_internal:subscription_succeeded",
        "price",
        "pusher_internal:subscription_count",
    ]
    assert first.on("cache-prices")[-2:] == ["price", "pusher_internal:subscription_count"]


async def test_presence_joiner_gets_the_roster_and_others_get_member_added() -> None:
    h = Harness()
    alice, bob = await h.connect(), await h.connect()
    await h.join(alice, "a", {"n": "Alice"})
    await h.join(bob, "b")
    assert bob.on(ROOM) == ["pusher_internal:subscription_succeeded"]
    assert alice.on(ROOM) == [
        "pusher_internal:subscription_succeeded",
        "pusher_internal:member_added",
    ]
    # No subscription_count on presence channels (channels.md §6).
    assert "pusher_internal:subscription_count" not in alice.on(ROOM) + bob.on(ROOM)


async def test_signin_success_precedes_watchlist_events() -> None:
    h = Harness()
    watcher = await h.connect()
    await h.signin(watcher, {"id": "w", "watchlist": ["x"]})
    assert [e["event"] for e in watcher.events()[1:]] == [
        "pusher:signin_success",
        "pusher_internal:watchlist_events",
    ]


# --- cleanup exactly once (§3) ----------------------------------------------------------------


async def test_closed_twice_cleans_up_once() -> None:
    h = Harness()
    observer, leaver = await h.connect(), await h.connect()
    await h.join(observer, "obs")
    await h.join(leaver, "gone")
    await h.subscribe(leaver, "news")
    await h.signin(leaver, {"id": "gone"})
    before = len(observer.frames)
    await h.hub.closed(leaver.socket_id)
    await h.hub.closed(leaver.socket_id)
    await asyncio.gather(h.hub.closed(leaver.socket_id), h.hub.closed(leaver.socket_id))
    assert [decode(f)["event"] for f in observer.frames[before:]] == [
        "pusher_internal:member_removed"
    ]
    assert h.hub.connection_count == 1
    assert await h.hub.membership.users(h.app.id, ROOM) == ["obs"]
    assert await h.hub.membership.counts(h.app.id, "news") == ChannelCounts(0, 0)
    assert await h.hub.membership.online(h.app.id, ["gone"]) == set()
    assert h.webhooks.count("member_removed") == 1
    vacated = [e.channel for e in h.webhooks.events if e.name == "channel_vacated"]
    assert vacated == ["news"]  # presence-room is still occupied by the observer
    # Frames to a cleaned-up connection go nowhere; its socket id is forgotten.
    await h.hub.publish_event(h.app, "news", "late", "{}", None)
    assert not h.hub.is_subscribed(leaver.socket_id, "news")


async def test_receive_after_close_is_ignored() -> None:
    h = Harness()
    conn = await h.connect()
    await h.hub.closed(conn.socket_id)
    await h.subscribe(conn, "news")
    assert len(conn.frames) == 1
    assert await h.hub.membership.counts(h.app.id, "news") == ChannelCounts(0, 0)


# --- heartbeats through the hub (protocol.md §5.2) ----------------------------------------------


async def test_tick_probes_then_closes_with_4201() -> None:
    h = Harness(app=App(id="1", key="key", secret="secret", activity_timeout=10, pong_timeout=5))
    conn = await h.connect()
    h.now += 10
    h.hub.tick()
    assert conn.probes == 1 and conn.events()[-1]["event"] == "pusher:ping"
    h.now += 5
    h.hub.tick()
    assert conn.closes == [(4201, "Pong reply not received")]
    assert conn.events()[-1]["data"] == {"code": 4201, "message": "Pong reply not received"}


async def test_activity_resets_the_probe() -> None:
    h = Harness(app=App(id="1", key="key", secret="secret", activity_timeout=10, pong_timeout=5))
    conn = await h.connect()
    h.now += 10
    h.hub.tick()
    h.hub.activity(conn.socket_id)  # a Pong control frame
    h.now += 6
    h.hub.tick()
    assert conn.closes == []


# --- frame once -----------------------------------------------------------------------------


async def test_a_broadcast_is_framed_once_and_shared() -> None:
    h = Harness()
    conns = [await h.connect() for _ in range(4)]
    for conn in conns:
        await h.subscribe(conn, "private-news")
    calls = h.frame_calls
    await h.hub.publish_event(h.app, "private-news", "ev", '{"x":1}', conns[0].socket_id)
    assert h.frame_calls == calls + 1
    receivers = conns[1:]
    assert all(conn.frames[-1] is receivers[0].frames[-1] for conn in receivers)
    assert decode(receivers[0].frames[-1])["event"] == "ev"
    assert decode(conns[0].frames[-1])["event"] != "ev"  # excluded

    # Client events and member events are framed once as well.
    calls = h.frame_calls
    await h.send(conns[0], "client-typing", {"t": True}, channel="private-news")
    assert h.frame_calls == calls + 1
    assert all(conn.frames[-1] is receivers[0].frames[-1] for conn in receivers)


async def test_member_added_and_server_to_user_are_framed_once() -> None:
    h = Harness()
    members = [await h.connect() for _ in range(3)]
    for index, conn in enumerate(members):
        await h.join(conn, f"u{index}")
    joiner = await h.connect()
    calls = h.frame_calls
    await h.join(joiner, "new")
    assert h.frame_calls == calls + 2  # joiner's roster + one shared member_added
    assert all(conn.frames[-1] is members[0].frames[-1] for conn in members)

    tabs = [await h.connect() for _ in range(3)]
    for tab in tabs:
        await h.signin(tab, {"id": "42"})
    calls = h.frame_calls
    await h.hub.publish_event(h.app, "#server-to-user-42", "hi", "{}", None)
    assert h.frame_calls == calls + 1
    assert all(tab.frames[-1] is tabs[0].frames[-1] for tab in tabs)


# --- subscription_count throttle (channels.md §6) ---------------------------------------------


async def test_subscription_count_throttle_sends_the_last_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kanal.hub.subscription_count, "THROTTLE_SECONDS", 0.05)
    h = Harness()
    observer = await h.connect()
    await h.subscribe(observer, "crowd")
    for _ in range(104):  # 105 subscribers in total
        await h.subscribe(await h.connect(), "crowd")

    def counts() -> list[int]:
        return [
            orjson.loads(e["data"])["subscription_count"]
            for e in observer.events()
            if e["event"] == "pusher_internal:subscription_count"
        ]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while counts()[-1] != 105:
        assert loop.time() < deadline, counts()[-5:]
        await asyncio.sleep(0.01)
    assert counts()[:100] == list(range(1, 101))
    assert len(counts()) < 105  # throttled above 100


# --- presence exactly once (channels.md §4.3-4.4) -----------------------------------------------


class View:
    """One connection's idea of the member list, rebuilt from its frames; refuses duplicates."""

    def __init__(self) -> None:
        self.members: set[str] | None = None
        self.cursor = 0

    def update(self, conn: FakeConnection) -> None:
        for frame in conn.frames[self.cursor :]:
            event = decode(frame)
            if event.get("channel") != ROOM:
                continue
            data = orjson.loads(event["data"])
            if event["event"] == "pusher_internal:subscription_succeeded":
                self.members = set(data["presence"]["ids"])
                assert data["presence"]["count"] == len(self.members)
            elif event["event"] == "pusher_internal:member_added":
                assert self.members is not None, "member_added before subscription_succeeded"
                assert data["user_id"] not in self.members, f"duplicate member_added {data}"
                self.members.add(data["user_id"])
            elif event["event"] == "pusher_internal:member_removed":
                assert self.members is not None, "member_removed before subscription_succeeded"
                assert data["user_id"] in self.members, f"member_removed of a stranger {data}"
                self.members.remove(data["user_id"])
        self.cursor = len(conn.frames)


SLOTS = 5
USERS = ["u0", "u1", "u2"]


class PresenceMachine(RuleBasedStateMachine):
    """Sequential joins, leaves and closes: every view always equals the true member list."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.h = Harness()
        self.conns: dict[int, FakeConnection] = {}
        self.views: dict[int, View] = {}
        self.joined: dict[int, str] = {}  # slot -> user (the model)

    def run(self, work: Any) -> None:
        self.loop.run_until_complete(work)

    def teardown(self) -> None:
        self.loop.close()

    @rule(slot=st.integers(0, SLOTS - 1), user=st.sampled_from(USERS))
    def join(self, slot: int, user: str) -> None:
        if slot not in self.conns:
            self.conns[slot] = self.loop.run_until_complete(self.h.connect())
            self.views[slot] = View()
        if slot in self.joined:
            return
        self.run(self.h.join(self.conns[slot], user, {"slot": slot}))
        self.joined[slot] = user

    @precondition(lambda self: bool(self.joined))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.joined)))
        self.run(self.h.send(self.conns[slot], "pusher:unsubscribe", {"channel": ROOM}))
        del self.joined[slot]
        self.views[slot] = View()
        self.views[slot].cursor = len(self.conns[slot].frames)

    @precondition(lambda self: bool(self.conns))
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.conns)))
        conn = self.conns.pop(slot)
        self.run(self.h.hub.closed(conn.socket_id))
        self.run(self.h.hub.closed(conn.socket_id))
        self.joined.pop(slot, None)
        del self.views[slot]

    @invariant()
    def views_match_the_model(self) -> None:
        truth = set(self.joined.values())
        for slot, conn in self.conns.items():
            view = self.views[slot]
            view.update(conn)
            if slot in self.joined:
                assert view.members == truth
            else:
                assert view.members is None, "presence frames after leaving"
        users = self.loop.run_until_complete(self.h.hub.membership.users(APP.id, ROOM))
        assert set(users) == truth


def test_presence_events_exactly_once_sequential() -> None:
    run_state_machine_as_test(
        PresenceMachine, settings=settings(max_examples=150, stateful_step_count=30, deadline=None)
    )


class YieldingMembership:
    """MemoryMembership whose calls take a random number of loop turns before and after the
    atomic operation, like a networked store (Redis): the answer is right but arrives late."""

    def __init__(
        self, rnd: random.Random, inner: MemoryMembership | None = None, turns: int = 3
    ) -> None:
        self._inner = inner or MemoryMembership()
        self._rnd = rnd
        self._turns = turns

    async def _pause(self) -> None:
        for _ in range(self._rnd.randint(0, self._turns)):
            await asyncio.sleep(0)

    async def join(
        self, app_id: str, channel: str, socket_id: str, member: Member | None, max_users: int
    ) -> JoinResult:
        await self._pause()
        result = await self._inner.join(app_id, channel, socket_id, member, max_users)
        await self._pause()
        return result

    async def leave(self, app_id: str, channel: str, socket_id: str) -> LeaveResult | None:
        await self._pause()
        result = await self._inner.leave(app_id, channel, socket_id)
        await self._pause()
        return result

    async def counts(self, app_id: str, channel: str) -> ChannelCounts:
        return await self._inner.counts(app_id, channel)

    async def channels(self, app_id: str, prefix: str) -> dict[str, ChannelCounts]:
        return await self._inner.channels(app_id, prefix)

    async def users(self, app_id: str, channel: str) -> list[str]:
        return await self._inner.users(app_id, channel)

    async def roster(self, app_id: str, channel: str) -> dict[str, Any]:
        await self._pause()
        result = await self._inner.roster(app_id, channel)
        await self._pause()
        return result

    async def sign_in(self, app_id: str, user_id: str, socket_id: str) -> bool:
        return await self._inner.sign_in(app_id, user_id, socket_id)

    async def sign_out(self, app_id: str, user_id: str, socket_id: str) -> bool:
        return await self._inner.sign_out(app_id, user_id, socket_id)

    async def online(self, app_id: str, user_ids: Iterable[str]) -> set[str]:
        return await self._inner.online(app_id, user_ids)

    async def cache_put(
        self, app_id: str, channel: str, event: str, data: str, ttl: int, now: float
    ) -> None:
        await self._inner.cache_put(app_id, channel, event, data, ttl, now)

    async def cache_get(self, app_id: str, channel: str, now: float) -> CachedEvent | None:
        return await self._inner.cache_get(app_id, channel, now)

    async def add_connection(self, app_id: str, socket_id: str, limit: int) -> bool:
        return await self._inner.add_connection(app_id, socket_id, limit)

    async def remove_connection(self, app_id: str, socket_id: str) -> None:
        await self._inner.remove_connection(app_id, socket_id)

    async def connection_count(self, app_id: str) -> int:
        return await self._inner.connection_count(app_id)


operation = st.tuples(st.sampled_from(["join", "leave", "close"]), st.sampled_from(USERS))


async def interleaved_presence(rnd: random.Random, rounds: list[list[tuple[str, str]]]) -> None:
    h = Harness(membership=YieldingMembership(rnd))
    conns: dict[int, FakeConnection] = {}
    joined: dict[int, str] = {}
    for ops in rounds:
        work = []
        for slot, (op, user) in enumerate(ops):  # one operation per connection per round
            conn = conns.get(slot)
            if conn is None:
                conn = conns[slot] = await h.connect()
            if op == "join" and slot not in joined:
                joined[slot] = user
                work.append(h.join(conn, user))
            elif op == "leave" and slot in joined:
                del joined[slot]
                work.append(h.send(conn, "pusher:unsubscribe", {"channel": ROOM}))
            elif op == "close":
                joined.pop(slot, None)
                del conns[slot]
                work.append(h.hub.closed(conn.socket_id))
        await asyncio.gather(*work)  # the operations of a round interleave
    truth = set(joined.values())
    for slot in joined:
        view = View()
        view.update(conns[slot])  # also asserts no duplicate or stray member events
        assert view.members == truth, (slot, view.members, truth)


@example(seed=6, rounds=[[("join", "u0"), ("join", "u1")]])  # u1 never announced to u0
@example(seed=1, rounds=[[("join", "u0"), ("join", "u0")]])  # u0 announced to its own tab
@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    rounds=st.lists(st.lists(operation, min_size=1, max_size=SLOTS), min_size=1, max_size=6),
)
def test_presence_views_converge_under_interleavings(
    seed: int, rounds: list[list[tuple[str, str]]]
) -> None:
    asyncio.run(interleaved_presence(random.Random(seed), rounds))
