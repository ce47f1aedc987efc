"""The benchmark's kernel-stamped WebSocket subscriber (bench/stampclient.py).

A scripted server on a local socket speaks RFC 6455 at the byte level (its framing is written
here independently of the client's) and checks what the client does with partial frames, every
length encoding, fragmentation, pings and close; and that every benchmark frame gets a kernel
arrival stamp that is never later than the user-space receipt time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
from collections.abc import Awaitable, Callable

import pytest
from bench.protocol import event_data
from bench.stampclient import (
    FrameParser,
    HandshakeError,
    ProtocolError,
    client_frame,
    connect_stamped,
)
from bench.wsclient import Stats, Subscriber

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        return bytes([first, len(payload)]) + payload
    if len(payload) < 65536:
        return bytes([first, 126]) + struct.pack("!H", len(payload)) + payload
    return bytes([first, 127]) + struct.pack("!Q", len(payload)) + payload


def decode_client_frame(raw: bytes) -> tuple[int, bytes, int]:
    """(opcode, unmasked payload, bytes used); asserts the frame is final and masked."""
    assert raw[0] & 0x80 and not raw[0] & 0x70
    assert raw[1] & 0x80, "client frames must be masked"
    size, at = raw[1] & 0x7F, 2
    if size == 126:
        size, at = struct.unpack("!H", raw[2:4])[0], 4
    elif size == 127:
        size, at = struct.unpack("!Q", raw[2:10])[0], 10
    key = raw[at : at + 4]
    body = raw[at + 4 : at + 4 + size]
    assert len(body) == size
    return raw[0] & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(body)), at + 4 + size


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    extra = {126: 2, 127: 8}.get(size, 0)
    ext = await reader.readexactly(extra)
    if extra:
        size = int.from_bytes(ext, "big")
    rest = await reader.readexactly(4 + size)
    opcode, payload, _ = decode_client_frame(head + ext + rest)
    return opcode, payload


def pusher(event: str, data: object, channel: str | None = None) -> bytes:
    message: dict[str, object] = {"event": event, "data": json.dumps(data)}
    if channel:
        message["channel"] = channel
    return json.dumps(message).encode()


def bench_event(size: int, seq: int) -> bytes:
    return pusher("bench-ev", event_data(size, seq), "bench")


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(script: Script, accept: Callable[[bytes], bytes] | None = None) -> asyncio.Server:
    """A server that completes the opening handshake (with ``accept``'s answer), then ``script``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            assert lines[0].startswith("GET /app/key?protocol=7 HTTP/1.1")
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            assert headers["upgrade"].lower() == "websocket"
            assert headers["sec-websocket-version"] == "13"
            key = headers["sec-websocket-key"].encode()
            assert len(base64.b64decode(key)) == 16
            answer = (accept or _accept)(key)
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + answer
                + b"\r\n\r\n"
                # the first frame in the same segment as the 101
                + server_frame(0x1, pusher("pusher:connection_established", {"socket_id": "1.2"}))
            )
            await script(reader, writer)
        finally:
            writer.close()

    return await asyncio.start_server(handler, "127.0.0.1", 0)


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def url(server: asyncio.Server) -> str:
    port = server.sockets[0].getsockname()[1]
    return f"ws://127.0.0.1:{port}/app/key?protocol=7"


async def test_frames_pings_close_and_kernel_stamps() -> None:
    stats = Stats()
    sent_seqs: list[int] = []
    go = asyncio.Event()
    done: dict[str, object] = {}

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opcode, payload = await read_client_frame(reader)
        assert opcode == 0x1
        assert json.loads(payload) == {"event": "pusher:subscribe", "data": {"channel": "bench"}}
        writer.write(
            server_frame(0x1, pusher("pusher_internal:subscription_succeeded", {}, "bench"))
        )
        await go.wait()
        # 7-bit length, one byte per write: the frame arrives in pieces
        for byte in server_frame(0x1, bench_event(60, 1)):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.002)
        # 16-bit and 64-bit lengths, the long one split inside its header and its payload
        writer.write(server_frame(0x1, bench_event(300, 2)))
        big = server_frame(0x1, bench_event(70_000, 3))
        for cut in (5, 40_000):
            writer.write(big[:cut])
            await writer.drain()
            await asyncio.sleep(0.01)
            big = big[cut:]
        writer.write(big)
        # a fragmented message with a ping between its fragments
        message = bench_event(200, 4)
        writer.write(
            server_frame(0x1, message[:50], fin=False)
            + server_frame(0x9, b"between")
            + server_frame(0x0, message[50:120], fin=False)
            + server_frame(0x0, message[120:])
        )
        # several frames in one write (one read, one stamp)
        writer.write(b"".join(server_frame(0x1, bench_event(100, seq)) for seq in (5, 6, 7)))
        sent_seqs.extend(range(1, 8))
        assert await read_client_frame(reader) == (0xA, b"between")
        writer.write(server_frame(0x9, b"hi"))
        assert await read_client_frame(reader) == (0xA, b"hi")
        writer.write(server_frame(0x1, pusher("pusher:ping", {})))
        opcode, payload = await read_client_frame(reader)
        assert (opcode, json.loads(payload)["event"]) == (0x1, "pusher:pong")
        writer.write(server_frame(0x8, (4001).to_bytes(2, "big") + b"bye"))
        done["close"] = await read_client_frame(reader)
        done["eof"] = await reader.read()

    server = await serve(script)
    async with server:
        sub = Subscriber(stats, [("bench", "")], ("key", "secret"))
        closer = await connect_stamped(url(server), sub)
        await asyncio.wait_for(sub.ready, 5)
        assert sub.socket_id == "1.2"
        stats.reset(latency=True)
        go.set()
        for _ in range(500):
            if "eof" in done:
                break
            await asyncio.sleep(0.01)
        closer()  # already closed by the server: a no-op

    assert done == {"close": (0x8, (4001).to_bytes(2, "big")), "eof": b""}
    assert stats.closed == 1  # Subscriber.lost ran once
    assert stats.frames == len(sent_seqs) == 7
    assert stats.latencies is not None
    kernel, user = list(stats.latencies), list(stats.user_latencies)
    assert len(kernel) == len(user) == 7
    assert stats.unstamped == 0
    assert stats.merged >= 2  # frames 5, 6 and 7 came in one write: one read, one stamp
    for k, u in zip(kernel, user, strict=True):
        assert 0 < k <= u + 10_000, (k, u)  # the kernel stamp precedes the user-space one
    assert max(user) < 5e9


async def test_wrong_accept_fails_the_handshake() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await serve(script, accept=lambda key: _accept(key + b"x"))
    async with server:
        stats = Stats()
        sub = Subscriber(stats, [("bench", "")], ("key", "secret"))
        with pytest.raises(HandshakeError, match="Sec-WebSocket-Accept"):
            await connect_stamped(url(server), sub)
        assert stats.closed == 0
        assert not sub.ready.done()


async def test_refused_upgrade_fails_the_handshake() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        sub = Subscriber(Stats(), [("bench", "")], ("key", "secret"))
        with pytest.raises(HandshakeError, match="401"):
            await connect_stamped(url(server), sub)


def test_parser_reassembles_any_split() -> None:
    stream = (
        server_frame(0x1, b"a" * 10)
        + server_frame(0x1, b"b" * 300)
        + server_frame(0x2, b"c" * 70_000)
        + server_frame(0x1, b"de", fin=False)
        + server_frame(0xA, b"")
        + server_frame(0x0, b"fg")
    )
    expected = [
        (0x1, b"a" * 10),
        (0x1, b"b" * 300),
        (0x2, b"c" * 70_000),
        (0xA, b""),
        (0x1, b"defg"),
    ]
    assert FrameParser().feed(stream) == expected
    for step in (1, 2, 3, 7, 126, 4096):
        parser = FrameParser()
        out: list[tuple[int, bytes]] = []
        for at in range(0, len(stream), step):
            out += parser.feed(stream[at : at + step])
        assert out == expected, step


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (bytes([0x81, 0x81]) + b"\0\0\0\0x", 1002),  # masked server frame
        (bytes([0xC1, 0x01]) + b"x", 1002),  # RSV1 without an extension
        (server_frame(0x9, b"x" * 126), 1002),  # control frame over 125 bytes
        (server_frame(0x9, b"x", fin=False), 1002),  # fragmented control frame
        (server_frame(0x0, b"x"), 1002),  # continuation without a message
        (server_frame(0x3, b"x"), 1002),  # reserved opcode
        (bytes([0x81, 127]) + (1 << 40).to_bytes(8, "big"), 1009),  # too large
    ],
)
def test_parser_rejects_protocol_errors(raw: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        FrameParser().feed(raw)
    assert caught.value.code == code


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_client_frames_are_masked_with_the_right_length(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    raw = client_frame(0x1, payload)
    assert decode_client_frame(raw) == (0x1, payload, len(raw))
    fixed = client_frame(0x1, b"abcd", key=b"\x01\x02\x03\x04")
    assert fixed == bytes([0x81, 0x84, 1, 2, 3, 4, 0x60, 0x60, 0x60, 0x60])


async def test_subscriber_without_stamp_uses_user_time() -> None:
    stats = Stats()
    sub = Subscriber(stats, [], ("key", "secret"))
    sub.live = True
    stats.reset(latency=True)
    sent = time.monotonic_ns() - 1_000_000
    sub.feed(pusher("bench-ev", event_data(60, 0, sent), "bench"), 0)
    sub.feed(pusher("bench-ev", event_data(60, 1, sent), "bench"), sent + 500_000)
    assert stats.latencies is not None
    kernel, user = list(stats.latencies), list(stats.user_latencies)
    assert kernel[0] == user[0] >= 1_000_000  # no stamp: the kernel figure is the user one
    assert kernel[1] == 500_000 < user[1]
