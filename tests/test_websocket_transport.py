"""The WebSocket connection object (kanal.transport.websocket) over raw sockets: RFC 6455
errors get their close codes, a client's Close is echoed, frames that arrive with the
upgrade request are read, floods are answered in order, and an internal error costs one
connection only."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.conftest import APP_KEY, RunningServer
from tests.wsclient import Clients, RawWebSocket, client_frame, wait_until

PATH = f"/app/{APP_KEY}?protocol=7&client=js&version=8.4.0"
PING = orjson.dumps({"event": "pusher:ping", "data": {}})


@pytest.fixture
async def raw(kanal_server: RunningServer) -> AsyncIterator[RawWebSocket]:
    socket = await RawWebSocket.connect(kanal_server.port, PATH, rcvbuf=1 << 20)
    established = await socket.read_json()
    assert established["event"] == "pusher:connection_established"
    yield socket
    socket.close()


async def closed_with(socket: RawWebSocket) -> int:
    while True:
        opcode, payload = await socket.read_frame()
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0])


async def test_invalid_utf8_text_is_closed_with_1007(raw: RawWebSocket) -> None:
    await raw.send_frame(0x1, b'{"event":"\xff\xfe"}')
    assert await closed_with(raw) == 1007


async def test_unmasked_client_frame_is_closed_with_1002(raw: RawWebSocket) -> None:
    await raw.send_frame(0x1, PING, masked=False)
    assert await closed_with(raw) == 1002


async def test_client_close_is_echoed_and_the_hub_forgets_the_socket(
    kanal_server: RunningServer, raw: RawWebSocket
) -> None:
    assert kanal_server.hub.connection_count == 1
    await raw.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
    assert await closed_with(raw) == 1000
    assert await raw.reader.read() == b""  # then the server closes TCP
    await wait_until(lambda: kanal_server.hub.connection_count == 0)


async def test_frames_sent_with_the_upgrade_request_are_read(kanal_server: RunningServer) -> None:
    socket = await RawWebSocket.connect(kanal_server.port, PATH, first=client_frame(0x1, PING))
    try:
        assert (await socket.read_json())["event"] == "pusher:connection_established"
        assert (await socket.read_json())["event"] == "pusher:pong"
    finally:
        socket.close()


async def test_a_flood_is_answered_in_full_and_in_order(raw: RawWebSocket) -> None:
    count = 2000  # far past the inbound queue bound, so reading pauses and resumes
    raw.writer.write(b"".join(client_frame(0x9, b"%d" % i) for i in range(count)))
    await raw.writer.drain()
    for i in range(count):
        assert await raw.read_frame() == (0xA, b"%d" % i)


async def test_an_internal_error_closes_that_connection_only(
    kanal_server: RunningServer, raw: RawWebSocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = kanal_server.hub
    receive = hub.receive

    async def failing(socket_id: str, text: str | bytes) -> None:
        if "boom" in str(text):
            raise RuntimeError("injected failure")
        await receive(socket_id, text)

    monkeypatch.setattr(hub, "receive", failing)
    async with Clients() as clients:
        other = await clients.connect(kanal_server)
        await raw.send_text('{"event":"boom","data":{}}')
        assert await closed_with(raw) == 1011
        await other.subscribe("still-fine")
        await wait_until(lambda: hub.connection_count == 1)
