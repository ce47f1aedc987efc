"""Shared helpers for the end-to-end tests: the official Python server SDK (``pusher`` 3.3.4),
raw signed HTTP API requests, and a few pusher-js idioms built on :class:`JsDriver`.

The Python SDK blocks, so every call goes through :func:`call` (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import pusher

from kanal.protocol.signatures import sign_request
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer

from .jsclient import JsDriver, Record

T = TypeVar("T")

# pusher-js reconnects at most ~1 s after an unexpected close ("backoff" or the generic
# closed-while-connected path); watching this long for a new socket proves it gave up.
NO_RECONNECT_WINDOW = 1.5

# 32 bytes, base64 (encryption.md §6 vector).
MASTER_KEY = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowMTIzNDU="


def sdk(
    server: RunningServer,
    *,
    app_id: str = APP_ID,
    key: str = APP_KEY,
    secret: str = APP_SECRET,
    **options: Any,
) -> Any:
    """The official Python SDK pointed at ``server`` (plain HTTP)."""
    return pusher.Pusher(
        app_id=app_id, key=key, secret=secret, host="127.0.0.1", port=server.port, ssl=False,
        **options,
    )  # fmt: skip


async def call(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run a blocking SDK call in a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def signed_request(
    server: RunningServer,
    method: str,
    path: str,
    *,
    body: Any = None,
    params: Mapping[str, str] | None = None,
    key: str = APP_KEY,
    secret: str = APP_SECRET,
) -> tuple[int, str]:
    """A correctly signed HTTP API request (http-api.md §2) for what the SDK cannot send;
    returns (status, body text)."""
    raw = b"" if body is None else json.dumps(body).encode()
    query = sign_request(
        method=method, path=path, params=dict(params or {}), body=raw, app_key=key,
        app_secret=secret, timestamp=int(time.time()),
    )  # fmt: skip
    headers = {"Content-Type": "application/json"} if raw else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.base_url + path, params=query, data=raw, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.text()


async def connect(
    js: JsDriver,
    server: RunningServer,
    client: str,
    *,
    key: str = APP_KEY,
    secret: str = APP_SECRET,
    **opts: Any,
) -> str:
    """``js.connect`` with the default app's credentials; returns the socket id."""
    return await js.connect(client, key=key, port=server.port, secret=secret, **opts)


async def roundtrip(js: JsDriver, client: str) -> Record:
    """Send ``pusher:ping`` and wait for the ``pusher:pong``. The server answers in order, so
    once the pong is in, everything it sent this connection before the ping is in too: a
    sentinel for negative checks, and proof the connection still works."""
    since = js.mark()
    assert await js.send_raw(client, "pusher:ping", {})
    return await js.wait_for(client=client, type="message", event="pusher:pong", since=since)


def events(js: JsDriver, client: str, event: str, *, since: int = 0, **match: Any) -> list[Record]:
    """Channel events ``client`` has emitted to the application under the name ``event``."""
    return js.records(client=client, type="event", event=event, since=since, **match)


def closes(js: JsDriver, client: str, *, since: int = 0) -> list[Record]:
    """Socket close records of ``client``."""
    return js.records(client=client, type="socket", event="close", since=since)


def frames_in(js: JsDriver, client: str, event: str, *, since: int = 0) -> list[dict[str, Any]]:
    """Decoded inbound WebSocket frames of ``client`` (needs ``frames=True``) for ``event``."""
    out: list[dict[str, Any]] = []
    for rec in js.records(client=client, type="frame", dir="in", since=since):
        try:
            frame = json.loads(rec["data"])
        except ValueError:
            continue
        if isinstance(frame, dict) and frame.get("event") == event:
            out.append(frame)
    return out


async def assert_gave_up(js: JsDriver, *clients: str, since: int) -> None:
    """Every client ended ``disconnected`` and opens no new socket within the window."""
    for client in clients:
        await js.wait_for(client=client, type="state", current="disconnected", since=since)
    await js.expect_none(
        lambda r: r.get("client") in clients,
        type="socket",
        event="created",
        within=NO_RECONNECT_WINDOW,
    )


async def wait_until(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, within: float = 5.0
) -> T:
    """Poll ``probe`` (e.g. an HTTP API query) until ``done(result)``; a condition wait for
    server-side state that no client observes. Returns the last result."""
    async with asyncio.timeout(within):
        while True:
            result = await probe()
            if done(result):
                return result
            await asyncio.sleep(0.05)


async def subscription_count(api: Any, channel: str) -> int:
    """The server's count of connections subscribed to ``channel`` (http-api.md §5.2)."""
    info = await call(api.channel_info, channel, ["subscription_count"])
    return int(info.get("subscription_count", 0))
