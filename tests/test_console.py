"""The live console's HTTP side against real servers (docs/console.md): access, the event log,
the overview, the trigger form, the webhook inspector, and cluster counts.

Both transports serve it (``transport`` is parametrised): kanal's own and the embedded ASGI
app under uvicorn.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from kanal.config import Config, ServerSettings, WebhookSettings, WebhookTarget
from kanal.server import build, serve
from tests.cluster_nodes import Cluster, cluster  # noqa: F401 - fixture
from tests.conftest import APP_SECRET, NO_DRAIN, RunningServer, StartServer, make_app
from tests.webapp import port_of, served
from tests.wsclient import Clients, trigger, wait_until

TOKEN = "console-token-0123456789"
WAIT = 5.0
Record = dict[str, Any]


class ConsoleClient:
    """What the page does, over HTTP: bearer token, overview, long polls with cursors."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str = TOKEN) -> None:
        self.session = session
        self.base = base + "/console/"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.cursor = {"events": 0, "webhooks": 0}
        self.events: list[Record] = []
        self.webhooks: list[Record] = []

    async def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        sent = self.headers if headers is None else headers
        async with self.session.get(self.base + path, headers=sent) as r:
            body = await r.read()
            return r.status, orjson.loads(body) if body.startswith(b"{") else body, r

    async def json(self, path: str) -> Any:
        status, body, _ = await self.get(path)
        assert status == 200, (status, body)
        return body

    async def poll(self, wait: float = 0) -> None:
        query = f"events={self.cursor['events']}&webhooks={self.cursor['webhooks']}&wait={wait}"
        page = await self.json(f"api/apps/1/stream?{query}")
        self.cursor = {"events": page["next_event"], "webhooks": page["next_webhook"]}
        self.events += page["events"]
        self.webhooks += page["webhooks"]

    async def until(self, found: Callable[[], Any], within: float = WAIT) -> Any:
        """Long-poll until ``found()`` is truthy (the page's own loop, bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not (result := found()):
            remaining = deadline - loop.time()
            assert remaining > 0, f"not seen within {within}s: {self.events} {self.webhooks}"
            await self.poll(wait=min(remaining, 2.0))
        return result

    def event(self, kind: str, **fields: Any) -> Callable[[], Record | None]:
        def find() -> Record | None:
            for record in self.events:
                if record["kind"] == kind and all(record.get(k) == v for k, v in fields.items()):
                    return record
            return None

        return find

    async def trigger(self, body: Any) -> tuple[int, Any]:
        async with self.session.post(
            self.base + "api/apps/1/events", data=orjson.dumps(body), headers=self.headers
        ) as r:
            return r.status, orjson.loads(await r.read())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as made:
        yield made


both_transports = pytest.mark.parametrize("transport", ["serve", "asgi"])


@both_transports
async def test_the_console_is_off_without_a_token(
    kanal_server: RunningServer, session: aiohttp.ClientSession
) -> None:
    for path in ("/console/", "/console/console.js", "/console/api/apps"):
        async with session.get(kanal_server.base_url + path) as response:
            assert response.status == 404, path


@both_transports
async def test_every_api_request_needs_the_token(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(admin_token=TOKEN)
    console = ConsoleClient(session, server.base_url)
    paths = ["api/apps", "api/apps/1/overview", "api/apps/1/stream", "api/apps/9/overview"]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, _, response = await console.get(path, headers)
            assert status == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    async with session.post(console.base + "api/apps/1/events", data=b"{}") as response:
        assert response.status == 401
    listing = await console.json("api/apps")
    assert listing == {"apps": [{"id": "1", "key": "app-key", "enabled": True}], "cluster": False}
    status, _, _ = await console.get("api/apps/9/overview")
    assert status == 404


@both_transports
async def test_the_page_is_static_and_locked_down(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(admin_token=TOKEN)
    async with session.get(server.base_url + "/console", allow_redirects=False) as response:
        assert response.status == 308
        assert response.headers["Location"] == "console/"  # relative: keeps any mount point
    async with session.get(server.base_url + "/console") as response:
        assert response.status == 200
        page = await response.text()
        assert 'src="console.js"' in page and 'href="console.css"' in page
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    for asset, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        async with session.get(server.base_url + "/console/" + asset) as response:
            assert response.status == 200 and response.content_type == kind
            text = await response.text()
            assert "http://" not in text and "https://" not in text  # nothing from elsewhere
    async with session.get(server.base_url + "/console/nope.js") as response:
        assert response.status == 404


@both_transports
async def test_the_log_shows_a_connections_life(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(admin_token=TOKEN)
    console = ConsoleClient(session, server.base_url)
    await console.poll()  # the console is open from now on
    async with Clients() as clients:
        client = await clients.connect(server, headers={"Origin": "https://shop.example"})
        sid = client.socket_id
        await console.until(
            console.event("connected", socket_id=sid, origin="https://shop.example")
        )
        await client.subscribe("news")
        await client.send_subscribe("private-orders", auth="app-key:bad")
        await client.expect("pusher:subscription_error")
        await client.join_presence("presence-room", "alice", {"name": "Alice"})
        await client.send("client-typing", {"on": True}, channel="presence-room")
        await trigger(server, ["news", "presence-room"], "headline", '"x"', socket_id=sid)
        await client.unsubscribe("news")
        await client.ping()
        await client.close()
        await console.until(console.event("disconnected", socket_id=sid))

    assert console.event("subscribed", channel="news", socket_id=sid, user_id=None)()
    refused = console.event("refused", channel="private-orders", socket_id=sid)()
    assert refused is not None and refused["code"] == 401, refused
    assert refused["message"] == "Invalid signature"  # not the hint quoting the signature
    assert console.event("subscribed", channel="presence-room", user_id="alice")()
    typing = console.event("client_event", channel="presence-room", event="client-typing")()
    assert (
        typing is not None
        and typing["user_id"] == "alice"
        and typing["size"] == len(b'{"on":true}')
    )
    message = console.event("api_message", event="headline")()
    assert message is not None
    assert message["channels"] == ["news", "presence-room"] and message["size"] == 3
    assert message["socket_id"] == sid  # the excluded socket
    assert console.event("unsubscribed", channel="news", socket_id=sid)()
    closed = console.event("disconnected", socket_id=sid)()
    assert closed is not None and closed["code"] in (1000, 1005)
    seqs = [record["seq"] for record in console.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert APP_SECRET not in json.dumps(console.events)


async def test_nothing_is_recorded_while_no_console_watches(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(admin_token=TOKEN)
    async with Clients() as clients:
        client = await clients.connect(server)
        await client.subscribe("news")
        await trigger(server, "news", "headline", '"x"')
        await client.expect("headline")
    assert not server.server.hub.console.watching
    console = ConsoleClient(session, server.base_url)
    await console.poll()
    assert console.events == []


async def test_a_long_poll_returns_as_soon_as_something_happens(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(admin_token=TOKEN)
    console = ConsoleClient(session, server.base_url)
    await console.poll()
    waiting = asyncio.ensure_future(console.poll(wait=15))
    await wait_until(lambda: server.server.hub.console.polling("1"))
    async with Clients() as clients:
        await clients.connect(server)
        await asyncio.wait_for(waiting, 5)  # far below the 15 s the poll was willing to wait
    assert console.events and console.events[0]["kind"] == "connected"


async def test_the_overview_and_a_trigger_from_the_form(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(admin_token=TOKEN)
    console = ConsoleClient(session, server.base_url)
    async with Clients() as clients:
        alice, bob = await clients.connect(server), await clients.connect(server)
        await alice.join_presence("presence-room", "alice", {"name": "Alice"})
        await bob.join_presence("presence-room", "bob", {"name": "Bob"})
        await bob.subscribe("news")
        view = await console.json("api/apps/1/overview")
        assert view["connections"] == 2 and view["node_connections"] == 2
        assert view["channel_count"] == 2 and view["cluster"] is False
        room = next(c for c in view["channels"] if c["name"] == "presence-room")
        assert room["subscription_count"] == 2 and room["user_count"] == 2
        members = sorted(room["members"], key=lambda m: m["user_id"])
        assert members == [
            {"user_id": "alice", "user_info": {"name": "Alice"}},
            {"user_id": "bob", "user_info": {"name": "Bob"}},
        ]
        assert {"name": "news", "subscription_count": 1} in view["channels"]

        status, body = await console.trigger(
            {"channels": ["news"], "name": "from-console", "data": "hello"}
        )
        assert (status, body) == (200, {})
        frame = await bob.expect("from-console", "news")
        assert frame["data"] == "hello"
        status, body = await console.trigger({"channels": ["bad name!"], "name": "x"})
        assert status == 400 and "error" in body
        status, body = await console.trigger([1, 2])
        assert status == 400


async def test_rates_are_measured_while_watched(
    start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    server = await start_server(admin_token=TOKEN)
    console = ConsoleClient(session, server.base_url)
    recorder = server.server.hub.console
    recorder.lease = 30.0
    await console.json("api/apps/1/overview")
    async with Clients() as clients:
        client = await clients.connect(server)
        await client.subscribe("news")
        for n in range(5):
            await trigger(server, "news", "tick", str(n))
        await client.expect(lambda f: f.get("event") == "tick" and f["data"] == "4")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (rates := recorder.rates("1")) is None or rates[1] == 0:
            assert loop.time() < deadline, "no rate after 5 s"
            await console.poll(wait=0.5)  # the recorder samples once a second
    view = await console.json("api/apps/1/overview")
    assert view["messages_out_per_second"] is not None


class FlakyEndpoint:
    """A webhook receiver that answers 500 to its first request, then 200."""

    def __init__(self) -> None:
        self.requests = 0
        self.url = ""
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        return web.Response(status=500 if self.requests == 1 else 200)


@pytest.fixture
async def flaky() -> AsyncIterator[FlakyEndpoint]:
    endpoint = FlakyEndpoint()
    web_app = web.Application()
    web_app.router.add_post("/hook", endpoint.handle)
    async with served(web_app) as base:
        endpoint.port = port_of(base)
        endpoint.url = f"http://user:pw@127.0.0.1:{endpoint.port}/hook?token=abc"
        yield endpoint


@both_transports
async def test_the_webhook_inspector(
    flaky: FlakyEndpoint, start_server: StartServer, session: aiohttp.ClientSession
) -> None:
    """(``flaky`` first: it must outlive the server, which delivers its last webhooks.)"""
    target = WebhookTarget(url=flaky.url, event_types=("member_added", "member_removed"))
    server = await start_server(
        apps=[make_app(webhooks=(target,))],
        webhooks=WebhookSettings(grace_period=0.5, batch_window=0.01, retry_window=10),
        admin_token=TOKEN,
    )
    console = ConsoleClient(session, server.base_url)
    async with Clients() as clients:
        first = await clients.connect(server)
        await first.join_presence("presence-room", "alice")
        # The first request fails (500) and is retried after about a second.
        retrying = await console.until(lambda: _find(console.webhooks, "retrying"))
        delivered = await console.until(lambda: _find(console.webhooks, "delivered"))
        await first.close()
        held = await console.until(lambda: _find(console.webhooks, "held"))
        second = await clients.connect(server)
        await second.join_presence("presence-room", "alice")  # back within the grace period
        cancelled = await console.until(lambda: _find(console.webhooks, "cancelled"))

    assert retrying["status"] == 500 and retrying["error"] == "HTTP 500"
    assert retrying["attempt"] == 1 and retrying["next_retry"] > retrying["time"]
    assert retrying["endpoint"] == f"http://127.0.0.1:{flaky.port}/hook"  # no secrets
    assert delivered["status"] == 200 and delivered["attempt"] == 2
    assert delivered["events"] == ["member_added"] and delivered["next_retry"] is None
    body = orjson.loads(delivered["body"])
    assert body["events"] == [
        {"name": "member_added", "channel": "presence-room", "user_id": "alice"}
    ]
    assert delivered["duration_ms"] >= 0
    assert held["events"] == ["member_removed"] and held["user_id"] == "alice"
    assert held["release_at"] > held["time"]
    assert cancelled["events"] == ["member_added"] and cancelled["channel"] == "presence-room"
    text = json.dumps(console.webhooks)
    assert "pw" not in text and "token=abc" not in text and "Signature" not in text


def _find(records: list[Record], kind: str) -> Record | None:
    return next((r for r in records if r["kind"] == kind), None)


async def test_cluster_counts_come_from_the_store(
    cluster: Cluster,  # noqa: F811 - the fixture
    session: aiohttp.ClientSession,
) -> None:
    watched, other = await cluster.node(admin_token=TOKEN), await cluster.node()
    console = ConsoleClient(session, watched.base_url)
    assert (await console.json("api/apps"))["cluster"] is True
    async with Clients() as clients:
        client = await clients.connect(other)
        await client.join_presence("presence-room", "alice", {"name": "Alice"})
        view = await console.json("api/apps/1/overview")
        assert view["cluster"] is True
        assert view["connections"] == 1 and view["node_connections"] == 0
        [room] = view["channels"]
        assert room["members"] == [{"user_id": "alice", "user_info": {"name": "Alice"}}]


async def test_an_open_console_does_not_hold_up_a_shutdown(
    session: aiohttp.ClientSession,
) -> None:
    """Stopping answers the consoles' long polls at once instead of draining them."""
    server = build(
        Config(server=ServerSettings(port=0, admin_token=TOKEN, **NO_DRAIN), apps=(make_app(),))
    )
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.ensure_future(serve(server, stop, port.set_result))
    try:
        console = ConsoleClient(session, f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}")
        polling = asyncio.ensure_future(console.poll(wait=20))
        await wait_until(lambda: server.hub.console.polling("1"))
        stop.set()
        await asyncio.wait_for(polling, 5)  # not the 20 s it would wait, nor a drain's 10 s
        await asyncio.wait_for(serving, 10)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 15)
