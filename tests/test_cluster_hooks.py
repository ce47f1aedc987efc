"""In-process hooks in a cluster: each event runs the hooks once for the whole cluster, in one
of the processes that registered hooks (docs/embedding.md, docs/scaling.md).

Embedded nodes (``kanal.asgi`` under uvicorn, :class:`tests.asgi_server.AsgiNode`) and plain
``kanal serve`` nodes (:meth:`tests.cluster_nodes.Cluster.node`, which have no hooks) share
one Redis. Every hook records ``(process, event)`` into one list; "exactly once" is checked
over all processes after a bounded quiet window, as for webhooks
(:meth:`tests.cluster_nodes.HookReceiver.exactly_once`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial

import pytest
import redis.asyncio as aredis

from kanal.config import App, WebhookSettings
from kanal.protocol.webhooks import EVENT_TYPES
from kanal.webhooks import HookEvent, RedisWebhookQueue
from tests.asgi_server import AsgiNode
from tests.cluster_nodes import FAST_HOOKS, LEASE, Cluster, cluster
from tests.conftest import RunningServer
from tests.wsclient import Clients, eventually, wait_until

__all__ = ["cluster"]

pytestmark = pytest.mark.redis

ROOM = "presence-room"
Spec = tuple[str, str] | tuple[str, str, str]  # (name, channel[, user_id])
QUIET = 2 * FAST_HOOKS.grace_period + LEASE / 3 + 0.3  # as HookReceiver.exactly_once waits
TAKEOVER = 15.0  # a resigned lease is taken at the next election tick (lease / 3 = 3.3 s)


@dataclass
class Runs:
    """Every hook call of the cluster, as (process name, event), in the order they ran."""

    calls: list[tuple[str, HookEvent]] = field(default_factory=list)

    def hook(self, process: str) -> Callable[[HookEvent], Awaitable[None]]:
        async def record(event: HookEvent) -> None:
            self.calls.append((process, event))

        record.__qualname__ = f"record_{process}"
        return record

    def matching(self, spec: Spec) -> list[tuple[str, HookEvent]]:
        name, channel, *user = spec
        return [
            (process, event)
            for process, event in self.calls
            if event.name == name
            and event.channel == channel
            and (not user or event.user_id == user[0])
        ]

    def ran(self, spec: Spec) -> bool:
        return bool(self.matching(spec))

    async def exactly_once(self, *expected: Spec, within: float = 10.0) -> set[str]:
        """Each spec runs, and none a second time within the quiet window; returns the
        processes that ran them."""
        for spec in expected:
            await wait_until(partial(self.ran, spec), within, f"{spec} to run")
        with contextlib.suppress(AssertionError):
            await wait_until(
                lambda: any(len(self.matching(s)) > 1 for s in expected), QUIET, "a duplicate"
            )
        processes = set()
        for spec in expected:
            matching = self.matching(spec)
            assert len(matching) == 1, f"{spec} ran {len(matching)} times: {matching}"
            processes.add(matching[0][0])
        return processes

    def processes(self) -> set[str]:
        return {process for process, _ in self.calls}


def queue_of(node: RunningServer) -> RedisWebhookQueue:
    queue = node.server.webhooks
    assert isinstance(queue, RedisWebhookQueue)
    return queue


async def knows_the_hooks(node: RunningServer) -> None:
    """Wait until a node's last read of the hooks' demand shows them (it reads every second)."""
    demand = queue_of(node).cluster_hooks.demand
    await wait_until(lambda: ("", "channel_occupied") in demand.cluster, 5.0, "the demand")


Start = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def embedded(cluster: Cluster) -> AsyncIterator[tuple[Start, dict[str, AsgiNode]]]:
    """Factory: an embedded cluster node named ``name``; with ``runs``, its hooks record every
    event type there. Nodes are stopped before the cluster fixture cleans Redis up."""
    nodes: dict[str, AsgiNode] = {}

    async def start(
        name: str, app: App, runs: Runs | None = None, settings: WebhookSettings = FAST_HOOKS
    ) -> RunningServer:
        node = AsgiNode(cluster.config([app], webhooks=settings))
        if runs is not None:
            node.app.hooks.on(EVENT_TYPES, runs.hook(name))
        nodes[name] = node
        return RunningServer(node.app.server, await node.start())

    yield start, nodes
    for node in nodes.values():
        await node.stop()


async def test_each_event_runs_the_hooks_once_in_one_process(
    cluster: Cluster, embedded: tuple[Start, dict[str, AsgiNode]]
) -> None:
    start, _ = embedded
    runs = Runs()
    app = await cluster.app(enable_subscription_count=True)
    a, b = await start("a", app, runs), await start("b", app, runs)
    plain = await cluster.node(apps=[app])  # kanal serve: no hooks, no webhook endpoint
    await knows_the_hooks(plain)
    async with Clients() as clients:
        on_a, on_b, on_plain = [await clients.connect(node) for node in (a, b, plain)]
        await on_a.join_presence(ROOM, "ua")
        await on_plain.join_presence(ROOM, "up")
        await on_b.join_presence(ROOM, "ub")
        await on_plain.send("client-hi", {"from": "plain"}, channel=ROOM)
        await on_a.send("client-hi", {"from": "a"}, channel=ROOM)
        await on_b.subscribe("cache-b")
        await on_plain.subscribe("news")
        for client in (on_a, on_b, on_plain):
            await client.close()
        processes = await runs.exactly_once(
            ("channel_occupied", ROOM),
            *[("member_added", ROOM, user) for user in ("ua", "up", "ub")],
            ("client_event", ROOM, "up"),
            ("client_event", ROOM, "ua"),
            ("channel_occupied", "cache-b"),
            ("cache_miss", "cache-b"),
            ("channel_occupied", "news"),
            *[("member_removed", ROOM, user) for user in ("ua", "up", "ub")],
            ("channel_vacated", ROOM),
            ("channel_vacated", "cache-b"),
            ("channel_vacated", "news"),
        )
    counts = [e.subscription_count for _, e in runs.matching(("subscription_count", "news"))]
    assert counts == [1, 0]
    leader = [name for name, node in (("a", a), ("b", b)) if queue_of(node).runs_hooks]
    assert runs.processes() == processes == set(leader)  # one process ran every hook
    assert queue_of(plain).cluster_hooks.leader is None  # it could not have
    assert len(runs.calls) == 19
    [(_, hi)] = runs.matching(("client_event", ROOM, "up"))
    assert (hi.app_id, hi.event, hi.data) == ("1", "client-hi", '{"from":"plain"}')


async def test_a_reload_on_another_node_within_the_grace_period_runs_no_hook(
    cluster: Cluster,
    embedded: tuple[Start, dict[str, AsgiNode]],
    raw: aredis.Redis,
    prefix: str,
) -> None:
    start, _ = embedded
    runs = Runs()
    app = await cluster.app()
    grace = replace(FAST_HOOKS, grace_period=1.0)
    a, b = await start("a", app, runs, grace), await start("b", app, runs, grace)
    async with Clients() as clients:
        first = await clients.connect(a)
        await first.join_presence("presence-page", "u1")
        await wait_until(lambda: bool(runs.matching(("member_added", "presence-page"))))
        await first.close()  # the reload: the user leaves node a ...
        hold = f"{prefix}{{wh}}:hooks:hold"

        async def held() -> bool:
            return bool(await raw.hexists(hold, "1\0presence-page\0uu1"))

        await eventually(held, what="member_removed held in Redis")  # ... is held there ...
        second = await clients.connect(b)  # ... and comes back on node b
        await second.join_presence("presence-page", "u1")
        # Released after the page's removals would have been; the hooks see events in stream
        # order, so once this one ran, those can no longer come.
        await second.subscribe("sentinel")
        await second.unsubscribe("sentinel")
        await wait_until(lambda: bool(runs.matching(("channel_vacated", "sentinel"))), 10.0)
    page = [(e.name, e.user_id) for _, e in runs.calls if e.channel == "presence-page"]
    assert page == [("channel_occupied", None), ("member_added", "u1")]
    assert queue_of(a).hook_stats.cancelled + queue_of(b).hook_stats.cancelled == 2


async def test_processes_without_hooks_never_run_them_and_a_late_registration_counts(
    cluster: Cluster, embedded: tuple[Start, dict[str, AsgiNode]]
) -> None:
    start, nodes = embedded
    runs = Runs()
    app = await cluster.app()
    a = await start("a", app)  # embedded, no hook yet
    b = await start("b", app)  # embedded, never any hook
    plain = await cluster.node(apps=[app])
    leader_a = queue_of(a).cluster_hooks.leader
    assert leader_a is not None and not leader_a.started  # no hook, no competing
    nodes["a"].app.hooks.on(EVENT_TYPES, runs.hook("a"))  # registered while running
    await wait_until(lambda: queue_of(a).runs_hooks, 5.0, "a to run the cluster's hooks")
    await knows_the_hooks(plain)
    await knows_the_hooks(b)
    async with Clients() as clients:
        for node in (b, plain):
            client = await clients.connect(node)
            await client.subscribe(f"on-{node.port}")
            await client.unsubscribe(f"on-{node.port}")
        channels = [f"on-{node.port}" for node in (b, plain)]
        processes = await runs.exactly_once(
            *[("channel_occupied", channel) for channel in channels],
            *[("channel_vacated", channel) for channel in channels],
        )
    assert processes == {"a"}
    leader_b = queue_of(b).cluster_hooks.leader
    assert leader_b is not None and not leader_b.started  # it never competed


async def test_when_the_process_running_hooks_stops_another_takes_over(
    cluster: Cluster, embedded: tuple[Start, dict[str, AsgiNode]]
) -> None:
    start, nodes = embedded
    runs = Runs()
    app = await cluster.app()
    a, b = await start("a", app, runs), await start("b", app, runs)
    plain = await cluster.node(apps=[app])
    await knows_the_hooks(plain)
    await wait_until(lambda: queue_of(a).runs_hooks or queue_of(b).runs_hooks, 5.0, "a leader")
    first, other = ("a", "b") if queue_of(a).runs_hooks else ("b", "a")
    async with Clients() as clients:
        client = await clients.connect(plain)
        await client.subscribe("before")
        assert await runs.exactly_once(("channel_occupied", "before")) == {first}
        await nodes[first].stop()  # graceful: it hands over and resigns
        await client.subscribe("after")
        await client.unsubscribe("before")
        processes = await runs.exactly_once(
            ("channel_occupied", "after"), ("channel_vacated", "before"), within=TAKEOVER
        )
    assert processes == {other}
    assert len(runs.calls) == 3


async def test_processes_registering_different_hooks_are_warned(
    cluster: Cluster,
    embedded: tuple[Start, dict[str, AsgiNode]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    start, nodes = embedded
    app = await cluster.app()
    caplog.set_level(logging.WARNING, logger="kanal.cluster_webhooks")
    a, b = await start("a", app), await start("b", app)
    nodes["a"].app.hooks.on("channel_occupied", Runs().hook("a"))
    nodes["b"].app.hooks.on("client_event", Runs().hook("b"), app_id="1")

    def warned() -> bool:
        return any("register hooks this one does not" in r.getMessage() for r in caplog.records)

    await wait_until(warned, 5.0, "the warning")
    messages = [r.getMessage() for r in caplog.records if "this one does not" in r.getMessage()]
    assert any("(1/client_event)" in m for m in messages) or any(
        "(*/channel_occupied)" in m for m in messages
    )
    await wait_until(  # still one process at a time runs the hooks
        lambda: queue_of(a).runs_hooks != queue_of(b).runs_hooks, 5.0, "one hooks leader"
    )
