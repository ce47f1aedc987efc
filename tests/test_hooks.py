"""In-process hooks on one embedded node (docs/embedding.md, "In-process hooks").

Every test runs ``kanal.asgi.create_app`` under uvicorn (:class:`tests.asgi_server.AsgiNode`),
registers hooks on ``kanal_app.hooks`` and drives them with real WebSocket clients; no app has
a webhook endpoint unless the test says so. Waits are conditions under a deadline; "nothing
fired" is asserted once a later event that must come after it has arrived at the same hook
(one hook sees its events in order).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kanal.config import App, Config, ServerSettings, WebhookSettings, WebhookTarget
from kanal.protocol.webhooks import EVENT_TYPES
from kanal.webhooks import HookEvent, Hooks, WebhookDispatcher
from tests.asgi_server import AsgiNode
from tests.conftest import RunningServer, make_app
from tests.wsclient import TIMEOUT, Clients, data_of, wait_until

FAST = WebhookSettings(grace_period=0.3, batch_window=0.02, retry_window=2.0)
CHAT = "private-chat"


class Recorder:
    """A hook that keeps every event it is called with (sync or async; thread-safe)."""

    def __init__(self) -> None:
        self.events: list[HookEvent] = []

    def __call__(self, event: HookEvent) -> None:
        self.events.append(event)

    async def record(self, event: HookEvent) -> None:
        self.events.append(event)

    def about(self, channel: str) -> list[tuple[str, str | None]]:
        return [(e.name, e.user_id) for e in self.events if e.channel == channel]

    def matching(self, name: str, channel: str) -> list[HookEvent]:
        return [e for e in self.events if e.name == name and e.channel == channel]

    async def wait_for(self, name: str, channel: str, count: int = 1) -> list[HookEvent]:
        await wait_until(
            lambda: len(self.matching(name, channel)) >= count, what=f"{count} x {name} {channel}"
        )
        return self.matching(name, channel)


Embed = Callable[..., AsgiNode]


@pytest.fixture
async def embed() -> AsyncIterator[Embed]:
    """Factory: an embedded node, not started yet, so that the test registers hooks first."""
    nodes: list[AsgiNode] = []

    def make(
        *, settings: WebhookSettings = FAST, apps: list[App] | None = None, **app: Any
    ) -> AsgiNode:
        config = Config(ServerSettings(port=0), tuple(apps or [make_app(**app)]), settings)
        node = AsgiNode(config)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.stop()


async def serve(node: AsgiNode) -> RunningServer:
    return RunningServer(node.app.server, await node.start())


async def scrape(server: RunningServer) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.base_url + "/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


# --- registration --------------------------------------------------------------------------


def test_registration_checks_names_and_callables_and_has_a_decorator_form() -> None:
    hooks = Hooks(WebhookSettings())
    seen = Recorder()
    assert hooks.on("member_removed", seen) is seen
    assert hooks.on(["channel_occupied", "channel_vacated"], seen.record, app_id="2") == seen.record

    @hooks.on("client_event")
    async def decorated(event: HookEvent) -> None:
        return None

    assert callable(decorated)
    assert hooks.wants("1", "member_removed") and hooks.wants("1", "client_event")
    assert hooks.wants("2", "channel_vacated") and not hooks.wants("1", "channel_vacated")
    assert hooks.serves("1") and not hooks.wants("1", "cache_miss")
    assert hooks.demand() == {
        ("", "member_removed"),
        ("", "client_event"),
        ("2", "channel_occupied"),
        ("2", "channel_vacated"),
    }
    with pytest.raises(ValueError, match="unknown hook event 'member_joined'"):
        hooks.on("member_joined", seen)
    with pytest.raises(ValueError, match="unknown hook event"):
        hooks.on([], seen)
    with pytest.raises(TypeError, match="must be callable"):
        hooks.on("client_event", 42)  # type: ignore[call-overload]


# --- every event type, in order, with its fields -------------------------------------------


async def test_every_event_type_reaches_a_hook_in_order_with_its_fields(embed: Embed) -> None:
    node = embed(enable_subscription_count=True)
    seen = Recorder()
    node.app.hooks.on(EVENT_TYPES, seen.record)  # one registration: one ordered stream
    server = await serve(node)
    before = time.time()
    async with Clients() as clients:
        alice = await clients.connect(server)
        await alice.join_presence("presence-room", "alice", {"name": "Alice"})
        await alice.subscribe("cache-prices")
        bob = await clients.connect(server)
        await bob.join_presence("presence-room", "bob")
        await bob.send("client-typing", {"typing": True}, channel="presence-room")
        await alice.expect("client-typing", "presence-room")
        await bob.close()
        await seen.wait_for("member_removed", "presence-room")
        await alice.close()
        await seen.wait_for("channel_vacated", "presence-room")
        await seen.wait_for("channel_vacated", "cache-prices")
    after = time.time()
    assert seen.about("presence-room") == [
        ("channel_occupied", None),
        ("member_added", "alice"),
        ("member_added", "bob"),
        ("client_event", "bob"),
        ("member_removed", "bob"),
        ("member_removed", "alice"),
        ("channel_vacated", None),
    ]
    counts = [e.subscription_count for e in seen.matching("subscription_count", "cache-prices")]
    assert seen.about("cache-prices") == [
        ("channel_occupied", None),
        ("cache_miss", None),
        *[("subscription_count", None)] * len(counts),
        ("channel_vacated", None),
    ]
    assert counts == [1, 0]
    [typing] = seen.matching("client_event", "presence-room")
    assert typing == HookEvent(
        name="client_event",
        channel="presence-room",
        app_id="1",
        time_ms=typing.time_ms,
        user_id="bob",
        event="client-typing",
        data='{"typing":true}',
        socket_id=bob.socket_id,
    )
    assert all(before * 1000 - 1 <= e.time_ms <= after * 1000 + 1 for e in seen.events)
    # The removal's time is the end of its grace period, as a webhook request's time_ms.
    [removed] = seen.matching("member_removed", "presence-room")[:1]
    assert removed.time_ms >= typing.time_ms + FAST.grace_period * 1000 - 50


async def test_a_member_who_rejoins_within_the_grace_period_fires_nothing(embed: Embed) -> None:
    node = embed(settings=replace(FAST, grace_period=1.0))
    seen = Recorder()
    names = ("channel_occupied", "channel_vacated", "member_added", "member_removed")
    node.app.hooks.on(names, seen.record)
    server = await serve(node)
    async with Clients() as clients:
        first = await clients.connect(server)
        await first.join_presence("presence-page", "u1")
        await seen.wait_for("member_added", "presence-page")
        await first.close()  # a page reload: the user leaves ...
        await wait_until(lambda: server.hub.connection_count == 0, what="the first connection gone")
        second = await clients.connect(server)  # ... and is back within the grace period
        await second.join_presence("presence-page", "u1")
        # A channel vacated after the reload is released after the page's removals would
        # have been; once the hook has it, they can no longer come.
        await second.subscribe("sentinel")
        await second.unsubscribe("sentinel")
        await seen.wait_for("channel_vacated", "sentinel")
    assert seen.about("presence-page") == [("channel_occupied", None), ("member_added", "u1")]


async def test_a_hook_for_one_app_sees_only_that_apps_events(embed: Embed) -> None:
    other = make_app(id="2", key="key-2", secret="secret-2")
    node = embed(apps=[make_app(), other])
    everything, only_two = Recorder(), Recorder()
    node.app.hooks.on("channel_occupied", everything.record)
    node.app.hooks.on("channel_occupied", only_two.record, app_id="2")
    server = await serve(node)
    async with Clients() as clients:
        on_one = await clients.connect(server)
        await on_one.subscribe("first")  # app 1, routed before app 2's event below
        on_two = await clients.connect(server, key="key-2", secret="secret-2")
        await on_two.subscribe("second")
        await only_two.wait_for("channel_occupied", "second")
        await everything.wait_for("channel_occupied", "second")
    assert [(e.app_id, e.channel) for e in only_two.events] == [("2", "second")]
    assert [(e.app_id, e.channel) for e in everything.events] == [("1", "first"), ("2", "second")]


# --- failures and slowness stay with their hook ----------------------------------------------


async def chat(clients: Clients, server: RunningServer) -> tuple[Any, Any]:
    sender, listener = await clients.connect(server), await clients.connect(server)
    await sender.subscribe(CHAT)
    await listener.subscribe(CHAT)
    return sender, listener


async def test_a_raising_and_a_slow_hook_delay_neither_messages_nor_other_hooks(
    embed: Embed, caplog: pytest.LogCaptureFixture
) -> None:
    node = embed()
    hooks = node.app.hooks
    blocked, gate = threading.Event(), asyncio.Event()
    release = threading.Event()

    def slow_sync(event: HookEvent) -> None:
        blocked.set()
        release.wait(TIMEOUT * 4)

    async def slow_async(event: HookEvent) -> None:
        await gate.wait()

    def boom(event: HookEvent) -> None:
        raise RuntimeError(f"boom on {event.data}")

    fast_sync, fast_async = Recorder(), Recorder()
    for hook in (slow_sync, slow_async, boom, fast_sync, fast_async.record):
        hooks.on("client_event", hook)
    server = await serve(node)
    caplog.set_level(logging.ERROR, logger="kanal.hooks")
    try:
        async with Clients() as clients:
            sender, listener = await chat(clients, server)
            for n in range(3):
                await sender.send("client-n", n, channel=CHAT)
            for n in range(3):
                frame = await listener.expect("client-n", CHAT)
                assert data_of(frame) == n
            await fast_sync.wait_for("client_event", CHAT, count=3)
            await fast_async.wait_for("client_event", CHAT, count=3)
            # Both slow hooks are still inside their first call.
            assert blocked.is_set() and not release.is_set() and not gate.is_set()
            await wait_until(lambda: hooks.stats.failed == 3, what="three failures of boom")
    finally:
        release.set()
        gate.set()
    await wait_until(lambda: hooks.stats.ran == 12, what="the slow hooks to catch up")
    assert hooks.stats.timed_out == 0
    failures = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)
    assert "test_hooks.test_a_raising_and_a_slow_hook" in failures[0].getMessage()
    text = await scrape(server)
    assert 'kanal_hooks_failed_total{reason="error"} 3.0' in text
    assert "kanal_hooks_run_total 12.0" in text


async def test_a_hook_that_times_out_is_logged_and_its_next_event_waits_for_it(
    embed: Embed, caplog: pytest.LogCaptureFixture
) -> None:
    node = embed(settings=replace(FAST, hook_timeout=0.2))
    hooks = node.app.hooks
    release = threading.Event()
    sync_calls: list[Any] = []
    async_calls: list[Any] = []

    def stuck_sync(event: HookEvent) -> None:
        sync_calls.append(event.data)
        if event.data == "0":
            release.wait(TIMEOUT * 4)  # a thread cannot be stopped: the next call waits

    async def stuck_async(event: HookEvent) -> None:
        async_calls.append(event.data)
        if event.data == "0":
            await asyncio.Event().wait()  # cancelled at the timeout

    hooks.on("client_event", stuck_sync)
    hooks.on("client_event", stuck_async)
    server = await serve(node)
    caplog.set_level(logging.ERROR, logger="kanal.hooks")
    try:
        async with Clients() as clients:
            sender, listener = await chat(clients, server)
            await sender.send("client-n", 0, channel=CHAT)
            await sender.send("client-n", 1, channel=CHAT)
            await listener.expect(lambda f: f.get("data") == "1")
            await wait_until(lambda: hooks.stats.timed_out == 2, what="both hooks to time out")
            await wait_until(lambda: async_calls == ["0", "1"], what="the async hook's next call")
            assert sync_calls == ["0"]  # its thread is still in the first call
    finally:
        release.set()
    await wait_until(lambda: sync_calls == ["0", "1"], what="the sync hook's next call")
    await wait_until(lambda: hooks.stats.ran == 2, what="both second calls")
    late = [
        r.getMessage() for r in caplog.records if "did not return within 0.2s" in r.getMessage()
    ]
    assert len(late) == 2 and all("client_event private-chat" in m for m in late)
    assert 'kanal_hooks_failed_total{reason="timeout"} 2.0' in await scrape(server)


async def test_a_full_hook_queue_drops_the_oldest_events_and_counts_them(embed: Embed) -> None:
    node = embed(settings=replace(FAST, hook_max_queue=3), max_client_events_per_second=100)
    hooks = node.app.hooks
    entered, release = threading.Event(), threading.Event()
    ran: list[Any] = []

    def blocked(event: HookEvent) -> None:
        ran.append(event.data)
        entered.set()
        release.wait(TIMEOUT * 4)

    hooks.on("client_event", blocked)
    server = await serve(node)
    try:
        async with Clients() as clients:
            sender, listener = await chat(clients, server)
            await sender.send("client-n", 0, channel=CHAT)
            await wait_until(entered.is_set, what="the hook to be busy with event 0")
            for n in range(1, 10):
                await sender.send("client-n", n, channel=CHAT)
            for n in range(10):  # delivery is not held up by the full queue
                frame = await listener.expect("client-n", CHAT)
                assert data_of(frame) == n
            await wait_until(lambda: hooks.stats.dropped_overflow == 6, what="six drops")
            assert hooks.pending == 4  # the call in progress and the queue's three
            assert 'kanal_hooks_dropped_total{reason="overflow"} 6.0' in await scrape(server)
    finally:
        release.set()
    await wait_until(lambda: len(ran) == 4, what="the queued events")
    assert ran == ["0", "7", "8", "9"]


# --- hooks beside webhook endpoints -----------------------------------------------------------


async def test_hooks_and_webhook_endpoints_get_the_same_events(embed: Embed) -> None:
    received: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        received.extend((await request.json())["events"])
        return web.Response(text="ok")

    receiver = web.Application()
    receiver.router.add_post("/hook", handle)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        target = WebhookTarget(url=url, event_types=("channel_occupied", "channel_vacated"))
        node = embed(webhooks=(target,))
        seen = Recorder()
        node.app.hooks.on(("channel_occupied", "channel_vacated"), seen)
        server = await serve(node)
        async with Clients() as clients:
            client = await clients.connect(server)
            await client.subscribe("news")
            await client.unsubscribe("news")
            await client.subscribe("reload")  # within the grace period: nothing for either
            await client.unsubscribe("reload")
            await client.subscribe("reload")
            await seen.wait_for("channel_vacated", "news")
            await wait_until(lambda: len(received) == 3, what="the three webhooks")
        assert [(e.name, e.channel) for e in seen.events] == [
            (e["name"], e["channel"]) for e in received
        ]
    finally:
        await runner.cleanup()


# --- shutdown --------------------------------------------------------------------------------


async def test_stopping_runs_held_removals_and_counts_what_it_gives_up(embed: Embed) -> None:
    node = embed(settings=replace(FAST, grace_period=60.0, shutdown_timeout=0.3))
    hooks = node.app.hooks
    vacated = Recorder()
    entered, release = threading.Event(), threading.Event()

    def stuck(event: HookEvent) -> None:
        entered.set()
        release.wait(TIMEOUT * 4)

    hooks.on("channel_vacated", vacated)
    hooks.on("client_event", stuck)
    server = await serve(node)
    dispatcher = node.app.server.webhooks
    assert isinstance(dispatcher, WebhookDispatcher)
    try:
        async with Clients() as clients:
            sender, _ = await chat(clients, server)
            await sender.send("client-n", 0, channel=CHAT)
            await sender.send("client-n", 1, channel=CHAT)
            await wait_until(entered.is_set, what="the stuck hook to be called")
            await sender.subscribe("news")
            await sender.unsubscribe("news")
            # news's channel_vacated in its grace period, the stuck call and the one behind it.
            await wait_until(lambda: dispatcher.pending == 3, what="the removal to be held")
            await node.stop()
    finally:
        release.set()
    assert [e.channel for e in vacated.events if e.channel == "news"] == ["news"]
    assert hooks.stats.dropped_shutdown == 2  # the call given up on, and the event behind it
    assert hooks.stats.ran == len(vacated.events)
