"""Webhooks end to end: a real kanal with ``[[apps.webhooks]]`` and a real HTTP receiver.

Every request is checked with the official Python SDK's ``validate_webhook`` (webhooks.md §6);
the hub's transitions (channels.md §3) drive the events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pusher
import pytest
from aiohttp import web

from kanal.config import WebhookSettings, WebhookTarget
from kanal.protocol.webhooks import EVENT_TYPES
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer, StartServer, make_app
from tests.webapp import served
from tests.wsclient import Clients, trigger

WAIT = 5.0
FAST = WebhookSettings(grace_period=0.3, batch_window=0.02, retry_window=2.0)


@dataclass
class Receiver:
    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    invalid: int = 0

    async def wait_for(self, name: str, channel: str, count: int = 1) -> list[dict[str, Any]]:
        def matching() -> list[dict[str, Any]]:
            return [e for e in self.events if e["name"] == name and e["channel"] == channel]

        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: len(matching()) >= count), timeout=WAIT
            )
        return matching()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    sdk = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET)
    state = Receiver()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        payload = sdk.validate_webhook(
            key=request.headers["X-Pusher-Key"],
            signature=request.headers["X-Pusher-Signature"],
            body=body.decode(),
        )
        async with state.changed:
            if payload is None or request.headers["Content-Type"] != "application/json":
                state.invalid += 1
            else:
                state.events.extend(payload["events"])
            state.changed.notify_all()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with served(app) as base:
        state.url = f"{base}/hook"
        yield state


async def hooked_server(start_server: StartServer, receiver: Receiver, **app: Any) -> RunningServer:
    target = WebhookTarget(url=receiver.url, event_types=EVENT_TYPES)
    server: RunningServer = await start_server(
        apps=[make_app(webhooks=(target,), **app)], webhooks=FAST
    )
    return server


async def test_occupied_vacated_member_events_validate_with_the_python_sdk(
    receiver: Receiver, start_server: StartServer
) -> None:
    server = await hooked_server(start_server, receiver, enable_subscription_count=True)
    async with Clients() as clients:
        alice = await clients.connect(server)
        await alice.join_presence("presence-room", "alice", {"name": "Alice"})
        await receiver.wait_for("channel_occupied", "presence-room")
        await receiver.wait_for("member_added", "presence-room")
        await alice.subscribe("cache-prices")
        await receiver.wait_for("cache_miss", "cache-prices")
        await receiver.wait_for("subscription_count", "cache-prices")
        bob = await clients.connect(server)
        await bob.join_presence("presence-room", "bob")
        await bob.send("client-typing", {"typing": True}, channel="presence-room")
        [client_event] = await receiver.wait_for("client_event", "presence-room")
        assert client_event == {
            "name": "client_event",
            "channel": "presence-room",
            "event": "client-typing",
            "data": '{"typing":true}',
            "socket_id": bob.socket_id,
            "user_id": "bob",
        }
        await bob.close()
        removed = await receiver.wait_for("member_removed", "presence-room")
        assert removed == [{"name": "member_removed", "channel": "presence-room", "user_id": "bob"}]
        await alice.close()
        await receiver.wait_for("channel_vacated", "presence-room")
        await receiver.wait_for("channel_vacated", "cache-prices")
    assert receiver.invalid == 0


async def test_page_reload_within_grace_period_sends_nothing(
    receiver: Receiver, start_server: StartServer
) -> None:
    server = await hooked_server(start_server, receiver)
    async with Clients() as clients:
        first = await clients.connect(server)
        await first.join_presence("presence-page", "u1")
        await receiver.wait_for("member_added", "presence-page")
        await first.close()  # the reload: a new connection joins within the grace period
        second = await clients.connect(server)
        await second.join_presence("presence-page", "u1")
        # Negative assertion: wait past the grace period, then nothing more may have been sent.
        await asyncio.sleep(FAST.grace_period * 3)
        names = [e["name"] for e in receiver.events if e["channel"] == "presence-page"]
        assert names == ["channel_occupied", "member_added"]


async def test_webhooks_for_triggered_events_are_not_sent(
    receiver: Receiver, start_server: StartServer
) -> None:
    server = await hooked_server(start_server, receiver)
    async with Clients() as clients:
        client = await clients.connect(server)
        await client.subscribe("news")
        await receiver.wait_for("channel_occupied", "news")
        await trigger(server, "news", "headline", orjson.dumps({"t": 1}).decode())
        await client.expect_next("headline", channel="news")
    assert {e["name"] for e in receiver.events} == {"channel_occupied"}


async def test_a_hanging_webhook_receiver_does_not_slow_message_delivery(
    start_server: StartServer,
) -> None:
    """webhooks.md §5: webhook work never blocks WebSocket or HTTP API handling."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        target = WebhookTarget(url=url, event_types=EVENT_TYPES)
        server = await start_server(
            apps=[make_app(webhooks=(target,))],
            webhooks=WebhookSettings(request_timeout=30.0, retry_window=60.0),
        )
        async with Clients() as clients:
            client = await clients.connect(server)
            await client.subscribe("news")
            await asyncio.wait_for(arrived.wait(), WAIT)  # the receiver now holds a request
            loop = asyncio.get_running_loop()
            started = loop.time()
            for n in range(20):
                await trigger(server, "news", "headline", f'{{"n":{n}}}')
                await client.expect_next("headline", channel="news")
            assert loop.time() - started < WAIT
    finally:
        release.set()
        await runner.cleanup()
