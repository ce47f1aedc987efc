"""The ASGI transport (kanal.transport.asgi) against uvicorn: limits, binary messages, the
start without lifespan events, shutdown, and the per-connection output bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

from kanal.config import Config, ServerSettings
from kanal.protocol.errors import CloseCode
from kanal.transport.asgi import AsgiConnection
from tests.asgi_server import AsgiNode
from tests.conftest import RunningServer, make_app
from tests.wsclient import Clients, api_request

SETTINGS = ServerSettings(port=0, max_frame_bytes=1000, max_request_bytes=2000)


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    async with Clients() as opened:
        yield opened


async def started(lifespan: Literal["on", "off"] = "on") -> tuple[AsgiNode, RunningServer]:
    node = AsgiNode(Config(server=SETTINGS, apps=(make_app(),)), lifespan=lifespan)
    return node, RunningServer(node.app.server, await node.start())


async def test_message_over_the_frame_limit_is_closed_with_1009(clients: Clients) -> None:
    node, server = await started()
    try:
        client = await clients.connect(server)
        await client.send_raw('{"event":"x","data":"' + "é" * 600 + '"}')  # 600 chars, 1200 B
        assert await client.expect_closed() == 1009
    finally:
        await node.stop()


async def test_binary_messages_are_ignored(clients: Clients) -> None:
    node, server = await started()
    try:
        client = await clients.connect(server)
        await client.ws.send_bytes(b"\x00\x01")
        await client.subscribe("still-here")
    finally:
        await node.stop()


async def test_request_body_over_the_limit_is_413() -> None:
    node, server = await started()
    try:
        response = await api_request(server, "POST", "/apps/1/events", body=b"x" * 2001)
        assert response.status == 413
    finally:
        await node.stop()


async def test_starts_on_first_request_without_lifespan(clients: Clients) -> None:
    node, server = await started(lifespan="off")
    try:
        assert node.app.realtime.loop is None  # nothing started it yet
        client = await clients.connect(server)
        await client.subscribe("lazy")
        assert node.app.realtime.loop is asyncio.get_running_loop()
    finally:
        await node.app.shutdown()
        await node.stop()


async def test_shutdown_closes_connections_for_a_reconnect(clients: Clients) -> None:
    """kanal's shutdown (lifespan shutdown, or the host app's) closes with 4200. (uvicorn
    itself closes open WebSockets with 1012 before it runs lifespan shutdown.)"""
    node, server = await started()
    try:
        client = await clients.connect(server)
        await node.app.shutdown()
        assert await client.expect_closed() == CloseCode.RECONNECT
    finally:
        await node.stop()


async def test_a_slow_reader_is_closed_at_the_output_bound() -> None:
    sent: list[dict[str, Any]] = []
    gate = asyncio.Event()

    async def send(message: Any) -> None:  # an ASGI server whose client stopped reading
        sent.append(dict(message))
        await gate.wait()

    conn = AsgiConnection("1.1", limit=100, text_of=bytes.decode)
    writer = asyncio.ensure_future(conn.write(send))
    conn.send(b"a" * 60)
    conn.send(b"b" * 60)  # over 100 bytes queued: closed as a slow consumer
    conn.send(b"c")  # after the close nothing more is queued
    gate.set()
    await asyncio.wait_for(writer, 5)
    assert sent[0] == {"type": "websocket.send", "text": "a" * 60}
    assert sent[-1]["type"] == "websocket.close"
    assert sent[-1]["code"] == CloseCode.OVER_CAPACITY
    assert all("c" not in message.get("text", "") for message in sent)
