"""Tests for kanal.webhooks.cluster_queue: the cluster's webhook queue in Redis (webhooks.md §4-5).

Two or three queues ("nodes", each with its own Redis client and dispatcher) share one Redis
under a unique prefix and post to one real aiohttp receiver. Waiting is always on a condition
under a deadline (:func:`until`); "nothing else was sent" is asserted once Redis shows the
events gone (held removals cancelled, stream drained) and every dispatcher is idle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pusher
import pytest
import redis.asyncio as aredis
from aiohttp import web

from kanal.adapters import redis_connect
from kanal.config import App, WebhookSettings, WebhookTarget
from kanal.protocol import webhooks as hooks
from kanal.protocol.webhooks import EVENT_TYPES, WebhookEvent
from kanal.webhooks.cluster_queue import GROUP, RedisWebhookQueue
from kanal.webhooks.delivery import WebhookClient
from kanal.webhooks.dispatch import WebhookDispatcher, default_client
from tests.redis_server import RedisProcess, delete_prefix
from tests.redis_server import client as client_of
from tests.webapp import port_of, served

pytestmark = pytest.mark.redis

KEY = "278d425bdf160c739803"  # webhooks.md §7 credentials
SECRET = "7ad3773142a6692b25b8"
WAIT = 10.0  # upper bound on any positive wait; the happy path takes milliseconds
GRACE = 0.4
VACATED = ("channel_vacated", "room", None)
OCCUPIED = ("channel_occupied", "room", None)

FAST = WebhookSettings(
    grace_period=GRACE,
    batch_window=0.02,
    max_batch_size=100,
    request_timeout=2.0,
    retry_window=5.0,
    max_queue=1000,
    shutdown_timeout=1.0,
)
# Small lease and claim threshold, so take-overs happen within a test's patience.
QUICK: dict[str, Any] = {"lease": 0.6, "claim_idle": 0.3, "poll": 0.05, "block": 0.1}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail with ``what`` after WAIT seconds."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def until_async(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# --- the receiver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    headers: Mapping[str, str]
    body: bytes
    at: float  # time.time() of arrival

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.json()["events"]
        return events


@dataclass
class Receiver:
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)  # path -> answers to give

    @property
    def url(self) -> str:
        return self.url_of("/hook")

    def url_of(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Request(request.path, dict(request.headers), body, time.time()))
        script = self.statuses.get(request.path, [])
        status = script.pop(0) if len(script) > 1 else (script[0] if script else 200)
        return web.Response(status=status)

    def events(self) -> list[dict[str, Any]]:
        """Events delivered to ``/hook`` (other paths are for failing endpoints)."""
        return [e for request in self.requests if request.path == "/hook" for e in request.events()]

    def names(self) -> list[tuple[str, str, str | None]]:
        return [(e["name"], e["channel"], e.get("user_id")) for e in self.events()]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server = web.Application()
    server.router.add_route("POST", "/{tail:.*}", rec.handle)
    async with served(server, access_log=None) as base:
        rec.port = port_of(base)
        yield rec


# --- nodes -----------------------------------------------------------------------------------


class HangingClient:
    """A webhook client whose requests never finish: a node stuck mid-delivery."""

    def __init__(self) -> None:
        self.posts = 0

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        self.posts += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


@dataclass
class Nodes:
    """Builds queues sharing the test's Redis and prefix; all closed at teardown."""

    url: str
    prefix: str
    app: App
    made: list[tuple[RedisWebhookQueue, aredis.Redis]] = field(default_factory=list)

    async def node(
        self,
        name: str,
        *,
        url: str | None = None,
        settings: WebhookSettings = FAST,
        client: Callable[[], WebhookClient] = default_client,
        wall: Callable[[], float] = time.time,
        start: bool = True,
        **options: Any,
    ) -> RedisWebhookQueue:
        redis_client = client_of(url or self.url)
        dispatcher = WebhookDispatcher(
            settings, client_factory=client, backoff_base=0.02, backoff_cap=0.2
        )
        queue = RedisWebhookQueue(
            redis_client,
            prefix=self.prefix,
            consumer=name,
            settings=settings,
            dispatcher=dispatcher,
            apps={self.app.id: self.app}.get,
            wall=wall,
            **{**QUICK, **options},
        )
        self.made.append((queue, redis_client))
        if start:
            await queue.start()
        return queue

    async def close(self) -> None:
        for queue, redis_client in self.made:
            await queue.close()
            await redis_client.aclose()


@pytest.fixture
def app(receiver: Receiver) -> App:
    target = WebhookTarget(url=receiver.url, event_types=EVENT_TYPES)
    return App(id="1", key=KEY, secret=SECRET, webhooks=(target,))


@pytest.fixture
async def nodes(redis_url: str, prefix: str, app: App) -> AsyncIterator[Nodes]:
    made = Nodes(redis_url, prefix, app)
    try:
        yield made
    finally:
        await made.close()
        await delete_prefix(redis_url, prefix)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = client_of(redis_url)
    await redis_connect.prepare(client)  # a cluster's slot map, before the test's first look
    yield client
    await client.aclose()


def key(prefix: str, name: str) -> str:
    return f"{prefix}{{wh}}:{name}"


async def leader_of(*queues: RedisWebhookQueue) -> RedisWebhookQueue:
    await until(lambda: sum(q.is_leader for q in queues) == 1, "exactly one leader")
    (leader,) = [q for q in queues if q.is_leader]
    return leader


async def drained(raw: aredis.Redis, prefix: str, *queues: RedisWebhookQueue) -> None:
    """Every emitted event reached Redis, was delivered and acknowledged, nothing is held."""
    for queue in queues:
        await asyncio.wait_for(queue.wait_flushed(), WAIT)

    async def empty() -> bool:
        counts = [await raw.exists(key(prefix, "hold")), await raw.zcard(key(prefix, "due"))]
        counts.append(await raw.xlen(key(prefix, "q")))
        return counts == [0, 0, 0] and all(q.inflight == 0 for q in queues)

    await until_async(empty, "an empty stream, no holds and no entry in flight")
    for queue in queues:
        await asyncio.wait_for(queue.dispatcher.wait_idle(), WAIT)


def client_event(n: int) -> WebhookEvent:
    return hooks.client_event("private-c", "client-n", str(n), "1.1", None)


def crash(queue: RedisWebhookQueue) -> None:
    """Kill a node's webhook work as a SIGKILL would: no ack, no hand-over, lease kept."""
    queue.leader.halt()
    for sender in queue.dispatcher._senders.values():
        if sender._task is not None:
            sender._task.cancel()


# --- exactly once, format ----------------------------------------------------------------------


async def test_each_event_is_delivered_once_by_the_leader(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    leader = await leader_of(a, b)
    for n in range(20):
        (a if n % 2 else b).emit(nodes.app, client_event(n))
    await until(lambda: len(receiver.events()) >= 20, "20 webhooks")
    await drained(raw, prefix, a, b)
    assert sorted(int(e["data"]) for e in receiver.events()) == list(range(20))
    assert leader.dispatcher.stats.sent == 20
    assert (a.dispatcher.stats.sent, b.dispatcher.stats.sent).count(0) == 1
    assert a.stats.queued + b.stats.queued == 20
    # Acknowledged entries are deleted: the stream holds nothing, the group nothing pending.
    assert (await raw.xpending(key(prefix, "q"), GROUP))["pending"] == 0


async def test_signature_validates_and_time_ms_is_the_creation_time(
    nodes: Nodes, receiver: Receiver
) -> None:
    created = time.time() - 100  # emitted 100 s ago (say, buffered while Redis was away)
    node = await nodes.node("a", wall=lambda: created)
    node.emit(nodes.app, hooks.cache_miss("cache-prices"))
    await until(lambda: len(receiver.requests) == 1, "the webhook")
    (request,) = receiver.requests
    assert request.json()["time_ms"] == round(created * 1000)
    assert request.headers["Content-Type"] == "application/json"
    client = pusher.Pusher(app_id="1", key=KEY, secret=SECRET)
    payload = client.validate_webhook(
        key=request.headers["X-Pusher-Key"],
        signature=request.headers["X-Pusher-Signature"],
        body=request.body.decode(),
    )
    assert payload is not None
    assert payload["events"] == [{"name": "cache_miss", "channel": "cache-prices"}]


async def test_events_no_endpoint_wants_never_reach_redis(
    nodes: Nodes, raw: aredis.Redis, prefix: str, receiver: Receiver
) -> None:
    node = await nodes.node("a")
    quiet = replace(nodes.app, webhooks=(WebhookTarget(receiver.url, ("cache_miss",)),))
    node.emit(quiet, client_event(1))
    node.emit(replace(nodes.app, webhooks=()), hooks.channel_occupied("c"))
    assert node.buffered == 0
    node.emit(quiet, hooks.cache_miss("x"))
    await until(lambda: len(receiver.requests) == 1, "the wanted webhook")
    assert receiver.names() == [("cache_miss", "x", None)]


# --- acknowledged only once delivered or given up --------------------------------------------


async def pending(raw: aredis.Redis, prefix: str) -> int:
    summary: Any = await raw.xpending(key(prefix, "q"), GROUP)
    count: int = summary["pending"]
    return count


async def test_an_entry_stays_pending_until_its_endpoint_answers_2xx(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    receiver.statuses["/hook"] = [503, 503, 200]
    node = await nodes.node("a")
    node.emit(nodes.app, client_event(1))
    await until(lambda: len(receiver.requests) == 1, "a failed attempt")
    assert await pending(raw, prefix) == 1
    assert node.inflight == 1
    await until(lambda: len(receiver.requests) == 3, "the successful attempt")
    await drained(raw, prefix, node)
    assert node.dispatcher.stats.sent == 1
    assert node.dispatcher.stats.failed_attempts == 2


async def test_an_entry_given_up_by_one_endpoint_is_acknowledged_after_both(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    receiver.statuses["/bad"] = [500]
    bad = WebhookTarget(receiver.url_of("/bad"), EVENT_TYPES)
    app = replace(nodes.app, webhooks=(*nodes.app.webhooks, bad))
    nodes.app = app  # the nodes look this app up by id
    node = await nodes.node("a", settings=replace(FAST, retry_window=1.5))
    node.emit(app, client_event(1))
    await until(lambda: len(receiver.events()) == 1, "delivery to /hook")
    assert await pending(raw, prefix) == 1  # /bad is still retrying
    await until(lambda: node.dispatcher.stats.dropped_expired == 1, "/bad to give up")
    await drained(raw, prefix, node)
    assert node.dispatcher.stats.sent == 1
    assert receiver.events() == [client_event(1).to_json()]


# --- the grace period across nodes (webhooks.md §4) --------------------------------------------


async def test_vacated_then_occupied_on_another_node_within_grace_sends_nothing(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    await leader_of(a, b)
    a.emit(nodes.app, hooks.channel_vacated("room"))
    await asyncio.wait_for(a.wait_flushed(), WAIT)
    assert a.stats.held == 1
    b.emit(nodes.app, hooks.channel_occupied("room"))
    await asyncio.wait_for(b.wait_flushed(), WAIT)
    assert b.stats.cancelled == 1
    b.emit(nodes.app, hooks.cache_miss("sentinel"))  # a later event does arrive
    await until(lambda: len(receiver.requests) == 1, "the sentinel")
    await drained(raw, prefix, a, b)
    assert receiver.names() == [("cache_miss", "sentinel", None)]


async def test_vacated_after_grace_is_sent_then_occupied(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    await leader_of(a, b)
    left = time.time()
    a.emit(nodes.app, hooks.channel_vacated("room"))
    await until(lambda: len(receiver.requests) == 1, "channel_vacated")
    assert receiver.requests[0].at - left >= GRACE - 0.05  # held for the grace period
    b.emit(nodes.app, hooks.channel_occupied("room"))
    await until(lambda: len(receiver.requests) == 2, "channel_occupied")
    await drained(raw, prefix, a, b)
    assert receiver.names() == [
        ("channel_vacated", "room", None),
        ("channel_occupied", "room", None),
    ]


async def test_member_removed_is_cancelled_per_user(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    a, b = await nodes.node("a"), await nodes.node("b")
    await leader_of(a, b)
    a.emit(nodes.app, hooks.member_removed("presence-r", "u1"))
    a.emit(nodes.app, hooks.member_removed("presence-r", "u2"))
    await asyncio.wait_for(a.wait_flushed(), WAIT)
    b.emit(nodes.app, hooks.member_added("presence-r", "u1"))  # u1 reloaded on node b
    await asyncio.wait_for(b.wait_flushed(), WAIT)
    assert b.stats.cancelled == 1
    await until(lambda: len(receiver.requests) == 1, "member_removed of u2")
    await drained(raw, prefix, a, b)
    assert receiver.names() == [("member_removed", "presence-r", "u2")]


async def test_a_due_removal_not_yet_released_goes_before_the_opening(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    # No leader (a ghost holds the lease), so nothing promotes the hold once it is due.
    await raw.set(key(prefix, "leader"), "ghost", px=60_000)
    a, b = await nodes.node("a"), await nodes.node("b")
    a.emit(nodes.app, hooks.channel_vacated("room"))
    await asyncio.wait_for(a.wait_flushed(), WAIT)

    async def due() -> bool:
        seconds, micros = await raw.time()
        score = await raw.zscore(key(prefix, "due"), "1\0room\0")
        return score is not None and score <= seconds * 1000 + micros // 1000

    await until_async(due, "the hold to fall due")
    b.emit(nodes.app, hooks.channel_occupied("room"))
    await asyncio.wait_for(b.wait_flushed(), WAIT)
    assert b.stats.cancelled == 0
    entries: Any = await raw.xrange(key(prefix, "q"))
    stream = [json.loads(fields[b"e"]) for _, fields in entries]
    assert [e["name"] for e in stream] == ["channel_vacated", "channel_occupied"]
    await raw.delete(key(prefix, "leader"))  # the ghost is gone: a real node takes over
    await until(lambda: len(receiver.requests) == 2, "both webhooks")
    assert receiver.names() == [
        ("channel_vacated", "room", None),
        ("channel_occupied", "room", None),
    ]


# --- nodes that die or leave -------------------------------------------------------------------


async def test_entries_of_a_crashed_leader_are_delivered_first_by_the_next(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    stuck = HangingClient()
    # The claim threshold is longer than the lease, so the new leader must wait for the
    # crashed one's entries to become claimable, and still deliver them before newer ones.
    a = await nodes.node("a", client=lambda: stuck, claim_idle=1.0)
    await until(lambda: a.is_leader, "a to lead")
    b = await nodes.node("b", claim_idle=1.0)
    b.emit(nodes.app, client_event(1))
    b.emit(nodes.app, client_event(2))
    await until(lambda: a.inflight == 2 and stuck.posts == 1, "a to be stuck delivering")
    crash(a)
    await until(lambda: b.is_leader, "b to take over")
    b.emit(nodes.app, client_event(3))
    await until(lambda: len(receiver.events()) == 3, "all three webhooks")
    await drained(raw, prefix, b)
    assert [e["data"] for e in receiver.events()] == ["1", "2", "3"]
    assert b.stats.claimed == 2


async def test_pending_entries_trimmed_away_are_counted_as_dropped(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    stuck = HangingClient()
    a = await nodes.node("a", client=lambda: stuck)
    await until(lambda: a.is_leader, "a to lead")
    b = await nodes.node("b")
    b.emit(nodes.app, client_event(1))
    b.emit(nodes.app, client_event(2))
    await until(lambda: a.inflight == 2, "a to be stuck delivering")
    crash(a)
    entries: Any = await raw.xrange(key(prefix, "q"), count=1)
    await raw.xdel(key(prefix, "q"), entries[0][0])  # as the MAXLEN cap would
    await until(lambda: len(receiver.events()) == 1, "the surviving webhook")
    assert receiver.events()[0]["data"] == "2"
    await until(lambda: b.stats.dropped_trimmed == 1, "the loss to be counted")


async def test_a_write_retried_after_a_lost_reply_is_applied_once(
    nodes: Nodes, raw: aredis.Redis, prefix: str
) -> None:
    node = await nodes.node("a", start=False)  # nothing reads the stream
    body = json.dumps(hooks.cache_miss("c").to_json())
    batch = [("n", "", "1", body, "1000")]
    await node._write(batch, key(prefix, "b:test"))
    await node._write(batch, key(prefix, "b:test"))  # the same batch again
    assert await raw.xlen(key(prefix, "q")) == 1
    assert node.stats.queued == 1


async def test_a_closing_leader_hands_its_entries_over_at_once(
    nodes: Nodes, receiver: Receiver, raw: aredis.Redis, prefix: str
) -> None:
    stuck = HangingClient()
    short = replace(FAST, shutdown_timeout=0.2)
    a = await nodes.node("a", client=lambda: stuck, settings=short, claim_idle=60.0)
    await until(lambda: a.is_leader, "a to lead")
    b = await nodes.node("b", claim_idle=60.0)  # would wait a minute for a dead node
    b.emit(nodes.app, client_event(1))
    await until(lambda: stuck.posts == 1, "a to be stuck delivering")
    await a.close()
    assert a.dispatcher.stats.dropped_shutdown == 1
    await until(lambda: len(receiver.requests) == 1, "the webhook, from b")
    await drained(raw, prefix, b)
    assert b.stats.claimed == 1


async def test_only_one_leader_and_a_new_one_after_close(nodes: Nodes) -> None:
    a, b, c = await nodes.node("a"), await nodes.node("b"), await nodes.node("c")
    first = await leader_of(a, b, c)
    await first.close()
    rest = [q for q in (a, b, c) if q is not first]
    await leader_of(*rest)


# --- Redis away --------------------------------------------------------------------------------


@pytest.fixture
async def private_nodes(redis_process: RedisProcess, prefix: str, app: App) -> AsyncIterator[Nodes]:
    made = Nodes(redis_process.url, prefix, app)
    try:
        yield made
    finally:
        await made.close()


async def test_events_buffered_while_redis_is_down_are_sent_when_it_is_back(
    private_nodes: Nodes,
    redis_process: RedisProcess,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = await private_nodes.node("a")
    await until(lambda: node.is_leader, "a to lead")
    redis_process.stop()
    with caplog.at_level(logging.WARNING, "kanal.cluster_webhooks"):
        for n in range(3):
            node.emit(private_nodes.app, client_event(n))
        await until(lambda: node.stats.redis_errors > 0, "a failed write")
        assert node.buffered == 3
        assert any("retrying" in r.message for r in caplog.records)
    redis_process.start()  # empty: the stream and its group are made again
    await until(lambda: len(receiver.events()) == 3, "the buffered webhooks")
    assert [e["data"] for e in receiver.events()] == ["0", "1", "2"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_full_buffer_drops_the_oldest_counted_and_logged(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    settings = replace(FAST, max_queue=5, shutdown_timeout=0.1)
    url = f"redis://127.0.0.1:{closed_port()}/0"
    with caplog.at_level(logging.WARNING, "kanal.cluster_webhooks"):
        node = await nodes.node("a", url=url, settings=settings)
        for n in range(8):
            node.emit(nodes.app, client_event(n))
        assert node.stats.dropped_overflow == 3
        assert node.buffered == 5
        assert any("buffer is full" in r.message for r in caplog.records)
        await node.close()
    assert node.stats.dropped_shutdown == 5
    assert any("never reached Redis" in r.message for r in caplog.records)
    node.emit(nodes.app, client_event(9))  # after close: counted, never raises
    assert node.stats.dropped_shutdown == 6


async def test_wait_written_waits_for_the_events_before_its_mark_only(nodes: Nodes) -> None:
    """What the drain waits for before closing a connection (kanal.drain): the events that
    connection's clean-up emitted, written or dropped; not the events emitted after them."""
    reachable = await nodes.node("a")
    reachable.emit(nodes.app, client_event(0))
    await asyncio.wait_for(reachable.wait_written(reachable.emitted), WAIT)
    assert reachable.stats.queued == 1

    settings = replace(FAST, max_queue=1, shutdown_timeout=0.1)
    url = f"redis://127.0.0.1:{closed_port()}/0"
    node = await nodes.node("b", url=url, settings=settings)  # nothing is ever written
    node.emit(nodes.app, client_event(1))
    first = asyncio.ensure_future(node.wait_written(node.emitted))
    await until(lambda: node.stats.redis_errors > 0, "event 1 in flight, failing")
    node.emit(nodes.app, client_event(2))
    node.emit(nodes.app, client_event(3))  # the buffer is full: 2 is dropped
    assert node.stats.dropped_overflow == 1
    later = asyncio.ensure_future(node.wait_written(2))
    await asyncio.sleep(0)
    assert not first.done() and not later.done()  # 2 is gone, but 1 is not written
    await node.close()  # what is left is dropped at shutdown
    await asyncio.wait_for(asyncio.gather(first, later), WAIT)
