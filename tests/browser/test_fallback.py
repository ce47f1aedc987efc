"""A browser whose WebSocket to kanal is refused falls back to HTTP on its own
(docs/http-fallback.md): headless Chromium loads a page from another origin, pusher-js's web
build connects through a small proxy that answers every ``Upgrade: websocket`` with 403 (as
some corporate proxies do) and forwards plain HTTP, and the page still receives a triggered
event, over xhr_streaming."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pusher
import pytest
from aiohttp import web

from tests.browser.browser import ROOT, Browser
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer
from tests.webapp import served

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PUSHER_JS = ROOT / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"
FALLBACK = 30.0  # pusher-js starts its HTTP transports 5 s after WebSocket, then retries

PAGE = """<!doctype html>
<link rel="icon" href="data:,">
<ul id="log"></ul>
<script src="/pusher.min.js"></script>
<script>
  const show = (text) => {
    const item = document.createElement("li");
    item.textContent = text;
    document.getElementById("log").append(item);
  };
  const query = new URLSearchParams(location.search);
  const port = Number(query.get("port"));
  const pusher = new Pusher(query.get("key"), {
    cluster: "mt1", wsHost: "127.0.0.1", wsPort: port, httpHost: "127.0.0.1", httpPort: port,
    forceTLS: false,  // enabledTransports left out: every transport, as a default page has
  });
  pusher.connection.bind("connected", () => {
    show("connected over " + pusher.connection.connection.transport.name);
  });
  pusher.subscribe("news").bind("pusher:subscription_succeeded", () => show("subscribed"));
  pusher.channel("news").bind("story", (data) => show("story " + data.n));
</script>
"""


@contextlib.asynccontextmanager
async def refusing_proxy(target: int) -> AsyncIterator[int]:
    """A proxy in front of kanal that refuses WebSocket upgrades (403) and forwards the rest.
    It looks at the first request of each connection only: a browser opens a new connection
    for every WebSocket, never reusing one that carried plain requests."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await forward(reader, writer)
        finally:
            writer.close()
            handlers.discard(task)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        if b"\r\nupgrade: websocket" in head.lower():
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        try:
            up_writer.write(head)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        if handlers:
            await asyncio.wait(list(handlers))
        await server.wait_closed()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def proxy(kanal_server: RunningServer) -> AsyncIterator[int]:
    async with refusing_proxy(kanal_server.port) as port:
        yield port


@pytest.fixture
async def site() -> AsyncIterator[str]:
    """The page, on an origin of its own (pusher-js's requests to kanal are cross-origin)."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def script(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PUSHER_JS)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/pusher.min.js", script)
    async with served(app) as base:
        yield base


async def test_a_page_whose_websocket_is_refused_falls_back_to_http(
    kanal_server: RunningServer, proxy: int, site: str, browser: Browser
) -> None:
    page = await browser.new_page(f"{site}/?key={APP_KEY}&port={proxy}")
    await page.wait_for_text("#log li", "connected over xhr_streaming", timeout=FALLBACK)
    await page.wait_for_text("#log li", "subscribed")
    api = pusher.Pusher(
        app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=kanal_server.port,
        ssl=False,
    )  # fmt: skip
    await asyncio.to_thread(api.trigger, "news", "story", {"n": 7})
    await page.wait_for_text("#log li", "story 7")
    assert kanal_server.hub.connection_count == 1
