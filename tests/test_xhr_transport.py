"""pusher-js's HTTP transports (kanal.transport.xhr) against a real node, over raw HTTP: a
session is a connection to the hub (socket_id, subscriptions, presence, close codes), its
buffers and lifetime are bounded, it is bound to its client, CORS honours allowed_origins.
Every test runs against ``kanal serve``'s transport and the ASGI app. pusher-js itself drives
the same paths in tests/e2e (enabledTransports xhr_streaming / xhr_polling)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pusher
import pytest
from aiohttp import web

from kanal.config import WebhookSettings, WebhookTarget
from kanal.drain import RECONNECT_REASON, close_in_batches
from kanal.protocol.webhooks import EVENT_TYPES
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer, StartServer, make_app
from tests.webapp import served
from tests.wsclient import wait_until
from tests.xhrclient import XhrSessionClient

pytestmark = pytest.mark.parametrize("transport", ["serve", "asgi"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def opened(client: XhrSessionClient) -> str:
    """Open the stream; the socket_id from connection_established, after ``o``."""
    response = await client.stream()
    assert response.status == 200
    assert await client.next() == ("o", None)
    [established] = await client.messages()
    assert established["event"] == "pusher:connection_established"
    socket_id: str = orjson.loads(established["data"])["socket_id"]
    return socket_id


def sdk(server: RunningServer) -> Any:
    """The official Python SDK (blocking: its calls to the node go through a thread)."""
    return pusher.Pusher(
        app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=server.port,
        ssl=False,
    )  # fmt: skip


async def trigger(server: RunningServer, channel: str, event: str, data: Any) -> None:
    await asyncio.to_thread(sdk(server).trigger, channel, event, data)


def subscribe(channel: str, **data: Any) -> dict[str, Any]:
    return {"event": "pusher:subscribe", "data": {"channel": channel, **data}}


async def test_a_stream_session_subscribes_and_receives_events(
    kanal_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = XhrSessionClient(http, kanal_server.port)
    await opened(client)
    assert kanal_server.hub.connection_count == 1
    async with http.get(f"{kanal_server.base_url}/metrics") as scraped:
        assert "kanal_http_sessions 1.0" in await scraped.text()
    assert await client.send(subscribe("news")) == 204
    [ok] = await client.messages()
    assert ok["event"] == "pusher_internal:subscription_succeeded"
    await trigger(kanal_server, "news", "story", {"n": 1})
    [event] = await client.messages()
    assert (event["event"], event["channel"], orjson.loads(event["data"])) == (
        "story",
        "news",
        {"n": 1},
    )
    client.close()


async def test_a_polling_session_gets_open_then_messages_then_heartbeats(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(http_heartbeat=0.3)
    client = XhrSessionClient(http, server.port)
    status, frames = await client.poll()
    assert status == 200 and frames[0] == ("o", None)
    messages = [m for letter, payload in frames[1:] if letter == "a" for m in payload]
    if not messages:  # connection_established may come with the next poll
        _, frames = await client.poll()
        messages = frames[0][1]
    assert messages[0]["event"] == "pusher:connection_established"
    assert await client.send(subscribe("news")) == 204
    _, frames = await client.poll()
    assert frames[0][1][0]["event"] == "pusher_internal:subscription_succeeded"
    assert await client.poll() == (200, [("h", None)])  # nothing to say: answered after 0.3 s


async def test_a_session_whose_receiver_does_not_return_is_closed_and_its_member_removed(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """As a dropped socket: member_removed to the others, then the webhooks."""
    hooks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        for event in (await request.json())["events"]:
            await hooks.put(event)
        return web.Response()

    app = web.Application()
    app.router.add_post("/hooks", receive)
    async with served(app) as base:
        target = WebhookTarget(url=f"{base}/hooks", event_types=EVENT_TYPES)
        server = await start_server(
            apps=[make_app(webhooks=(target,))],
            webhooks=WebhookSettings(grace_period=0.1, batch_window=0.02),
            http_session_timeout=0.3,
        )
        watcher, leaver = XhrSessionClient(http, server.port), XhrSessionClient(http, server.port)
        for client, user in ((watcher, "w"), (leaver, "l")):
            socket_id = await opened(client)
            auth = sdk(server).authenticate("presence-room", socket_id, {"user_id": user})
            await client.send(subscribe("presence-room", **auth))
            assert (await client.messages())[0]["event"] == "pusher_internal:subscription_succeeded"
        [added] = await watcher.messages()
        assert added["event"] == "pusher_internal:member_added"
        leaver.close()  # the stream drops and no new one comes
        [removed] = await watcher.messages()
        assert removed["event"] == "pusher_internal:member_removed"
        await wait_until(lambda: server.hub.connection_count == 1)
        seen = [await asyncio.wait_for(hooks.get(), 5) for _ in range(4)]
        assert {(e["name"], e.get("user_id")) for e in seen} == {
            ("channel_occupied", None),
            ("member_added", "w"),
            ("member_added", "l"),
            ("member_removed", "l"),
        }
        watcher.close()


async def test_a_session_answers_only_the_address_that_opened_it(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(trust_proxy_headers=True)
    owner = XhrSessionClient(http, server.port, headers={"X-Forwarded-For": "192.0.2.1"})
    await opened(owner)
    thief = XhrSessionClient(
        http, server.port, headers={"X-Forwarded-For": "192.0.2.2"}, session=owner.session
    )
    assert await thief.send(subscribe("news")) == 404
    assert (await thief.stream()).status == 404
    assert await owner.send(subscribe("news")) == 204
    thief.close()
    owner.close()


async def test_sends_to_no_session_or_with_bad_bodies_are_refused(
    kanal_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = XhrSessionClient(http, kanal_server.port)
    assert await client.send(subscribe("news")) == 404  # never opened
    await opened(client)
    assert await client.send(raw=b'{"event":"x"}') == 400  # not an array of strings
    assert await client.send(raw=b"[]") == 204  # the heartbeat
    assert await client.send("x" * 300_000) == 204  # over max_frame_bytes: closed
    assert await client.next() == ("c", [1009, "Message too big"])
    await wait_until(lambda: kanal_server.hub.connection_count == 0)


async def test_an_unread_session_over_its_buffer_is_closed_4100(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(max_output_buffer_bytes=4096)
    client = XhrSessionClient(http, server.port)
    await client.poll()
    await client.send(subscribe("news"))
    for n in range(10):  # nobody polls meanwhile: held, until the bound
        await trigger(server, "news", "story", {"n": n, "pad": "x" * 500})
    await wait_until(lambda: server.hub.connection_count == 0)
    _, frames = await client.poll()
    assert frames[-1] == ("c", [4100, "Slow consumer: output buffer limit exceeded"])


async def test_a_refused_session_hears_why_as_a_websocket_does(
    kanal_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = XhrSessionClient(http, kanal_server.port, key="no-such-key")
    await client.stream()
    assert await client.next() == ("o", None)
    [error] = await client.messages()
    assert error["event"] == "pusher:error"
    assert await client.next() == ("c", [4001, "Application does not exist"])
    assert kanal_server.hub.connection_count == 0


async def test_cors_lets_allowed_origins_in_and_no_others(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(apps=[make_app(allowed_origins=("https://page.example",))])
    url = f"{server.base_url}/pusher/app/app-key/1/abcdefgh/xhr_streaming"
    preflight = {"Access-Control-Request-Method": "POST"}
    async with http.options(url, headers={"Origin": "https://page.example", **preflight}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://page.example"
        assert r.headers["Access-Control-Allow-Headers"] == "Content-Type"
    async with http.options(url, headers={"Origin": "https://evil.test", **preflight}) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
    client = XhrSessionClient(http, server.port, headers={"Origin": "https://page.example"})
    response = await client.stream()
    assert response.headers["Access-Control-Allow-Origin"] == "https://page.example"
    assert response.headers["X-Accel-Buffering"] == "no"  # nginx passes each piece on
    client.close()


async def test_a_terminated_user_session_gets_its_close_code(
    kanal_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = XhrSessionClient(http, kanal_server.port)
    socket_id = await opened(client)
    auth = sdk(kanal_server).authenticate_user(socket_id, {"id": "u1"})
    await client.send({"event": "pusher:signin", "data": auth})
    assert (await client.messages())[0]["event"] == "pusher:signin_success"
    await asyncio.to_thread(sdk(kanal_server).terminate_user_connections, "u1")
    letter, payload = await client.next()
    while letter != "c":
        letter, payload = await client.next()
    assert payload[0] == 4009
    await wait_until(lambda: kanal_server.hub.connection_count == 0)


async def test_a_draining_node_hands_sessions_over_with_4200(
    kanal_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    client = XhrSessionClient(http, kanal_server.port)
    await opened(client)
    ready = asyncio.Event()

    async def flushed() -> None:
        ready.set()

    await close_in_batches(kanal_server.server.listener, 0.0, flushed)
    [error] = await client.messages()
    assert error["event"] == "pusher:error"
    assert error["data"] == {"code": 4200, "message": RECONNECT_REASON}
    assert (await client.next())[1][0] == 4200
    assert ready.is_set() and kanal_server.hub.connection_count == 0
    assert await client.send(subscribe("news")) == 404  # the session is gone


async def test_sessions_live_under_the_path_prefix(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(path_prefix="/realtime")
    client = XhrSessionClient(http, server.port, prefix="/realtime")  # httpPath /realtime/pusher
    await opened(client)
    client.close()
    elsewhere = XhrSessionClient(http, server.port)
    assert (await elsewhere.stream()).status == 404
    elsewhere.close()


async def test_a_silent_session_is_probed_then_closed_4201(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """protocol.md §5.2 over HTTP: the probe is ``h`` plus ``pusher:ping``; an ``[]`` send
    (pusher-js's answer to ``h``) is proof of life, silence closes the session with 4201."""
    server = await start_server(apps=[make_app(activity_timeout=1, pong_timeout=1)])
    answering, silent = XhrSessionClient(http, server.port), XhrSessionClient(http, server.port)
    await opened(answering)
    await opened(silent)
    for _ in range(3):  # three heartbeat periods, each answered with [] as pusher-js does
        letter, payload = await answering.next()
        while letter == "a":  # the probe's pusher:ping, which [] answers as well
            assert payload[0]["event"] == "pusher:ping"
            letter, payload = await answering.next()
        assert letter == "h"
        assert await answering.send(raw=b"[]") == 204
    letter, payload = await silent.next()
    while letter != "c":
        letter, payload = await silent.next()
    assert payload[0] == 4201
    assert server.hub.connection_count == 1
    answering.close()
