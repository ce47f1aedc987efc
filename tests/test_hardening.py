"""Robustness at the edges, over raw sockets: request heads that never end (RFC 9112 §5), Host
and HTTP version rules for the upgrade (RFC 9112 §3.2, RFC 6455 §4.1-§4.2.2), and close frames
(RFC 6455 §5.5.1, §7.1.5-§7.1.7, §7.4)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kanal.transport.http11 import MAX_HEAD_BYTES
from tests.conftest import APP_KEY, RunningServer
from tests.wsclient import RawWebSocket, client_frame

PATH = f"/app/{APP_KEY}?protocol=7&client=js&version=8.4.0"
UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n"
)
WAIT = 5.0


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes (or 5 s pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(65536), WAIT)
    finally:
        writer.close()


# --- request heads (RFC 9112) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host in HTTP/1.1
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two Hosts
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 may omit Host
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    ],
)
async def test_host_rules(kanal_server: RunningServer, request_head: bytes, status: int) -> None:
    answer = await exchange(kanal_server.port, request_head)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]


async def test_an_upgrade_over_http_1_0_is_refused(kanal_server: RunningServer) -> None:
    head = f"GET {PATH} HTTP/1.0\r\nHost: a\r\n{UPGRADE.format(version=13)}\r\n"
    answer = await exchange(kanal_server.port, head.encode())
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]


async def test_426_names_the_supported_version(kanal_server: RunningServer) -> None:
    head = f"GET {PATH} HTTP/1.1\r\nHost: a\r\n{UPGRADE.format(version=8)}\r\n"
    answer = await exchange(kanal_server.port, head.encode())
    assert answer.startswith(b"HTTP/1.1 426 "), answer[:80]
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in answer


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """``kanal serve`` as its own process (port, pid), so its RSS is its own."""
    command = [sys.executable, "-m", "kanal", "serve", "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert process.stderr is not None
    try:
        port = 0
        for line in process.stderr:  # the log line is the event that it listens
            if "kanal listening on " in line:
                port = int(line.rsplit(":", 1)[1])
                break
        assert port, "kanal exited before listening"
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)
        process.stderr.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def ready_latency(port: int) -> float:
    start = time.perf_counter()
    answer = await exchange(port, b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
    return time.perf_counter() - start


ENDLESS = {
    "head": b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ",
    # a chunked body's trailer section (RFC 9112 §7.1.2), kept by httptools like a head's
    "trailer": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\nx\r\n0\r\nX-Endless: ",
}


@pytest.mark.parametrize("where", ENDLESS.values(), ids=ENDLESS.keys())
@pytest.mark.parametrize("piece", [65536, 1024], ids=["streaming", "trickling"])
async def test_a_header_line_that_never_ends_is_refused_at_the_limit(
    served: tuple[int, int], piece: int, where: bytes
) -> None:
    """No CRLF ever comes: the head limit counts the unfinished line as it arrives and
    answers 431 at once, memory stays flat, and other connections are answered meanwhile."""
    port, pid = served
    before = rss_kib(pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.read(65536))  # done once the server answers
    writer.write(where)
    sent = 0
    with contextlib.suppress(ConnectionError):  # the server may stop reading: that is fine
        while not answer.done() and sent < 16 * MAX_HEAD_BYTES:
            writer.write(b"a" * piece)
            await writer.drain()
            sent += piece
            if sent % (8 * piece) == 0:
                assert await ready_latency(port) < 1.0  # the loop is never held up
            await asyncio.sleep(0)  # let the answer, if any, be read
    refused = await asyncio.wait_for(answer, WAIT)
    writer.close()
    assert refused.startswith(b"HTTP/1.1 431 "), refused[:80]
    # Refused long before the client gave up (what the client wrote includes what the
    # kernel buffered and the server dropped unread after answering).
    assert sent < 16 * MAX_HEAD_BYTES
    assert rss_kib(pid) - before < 8 * 1024  # and nothing piled up (KiB)


# --- close frames (RFC 6455) --------------------------------------------------------------------


@pytest.fixture
async def raw(kanal_server: RunningServer) -> AsyncIterator[RawWebSocket]:
    socket = await RawWebSocket.connect(kanal_server.port, PATH, rcvbuf=1 << 20)
    assert (await socket.read_json())["event"] == "pusher:connection_established"
    yield socket
    socket.close()


async def server_close(socket: RawWebSocket) -> tuple[int, bytes]:
    while True:
        opcode, payload = await socket.read_frame()
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0]), payload[2:]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000])
async def test_a_close_code_no_endpoint_may_send_is_a_protocol_error(
    raw: RawWebSocket, code: int
) -> None:
    await raw.send_frame(0x8, struct.pack("!H", code))
    assert (await server_close(raw))[0] == 1002
    assert await asyncio.wait_for(raw.reader.read(), WAIT) == b""


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1014, 3000, 4999])
async def test_a_valid_close_code_is_echoed(raw: RawWebSocket, code: int) -> None:
    await raw.send_frame(0x8, struct.pack("!H", code) + "fin ✓".encode())
    assert (await server_close(raw))[0] == code


async def test_a_one_byte_close_payload_is_1002(raw: RawWebSocket) -> None:
    await raw.send_frame(0x8, b"\x03")
    assert (await server_close(raw))[0] == 1002


async def test_a_close_reason_that_is_not_utf8_is_1007(raw: RawWebSocket) -> None:
    await raw.send_frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe")
    assert (await server_close(raw))[0] == 1007


async def test_a_64_bit_length_with_the_top_bit_set_is_1002(raw: RawWebSocket) -> None:
    raw.writer.write(bytes((0x81, 0x80 | 127)) + struct.pack("!Q", 1 << 63) + b"\x00" * 4)
    assert (await server_close(raw))[0] == 1002


async def test_after_failing_mid_fragment_the_close_reply_ends_tcp_cleanly(
    raw: RawWebSocket,
) -> None:
    """A fragment, then a new message where a continuation was due (§5.4): failed with 1002;
    the client's Close reply (sent after more junk) then closes TCP at once, no reset later."""
    raw.writer.write(client_frame(0x1, b'{"event":', fin=False) + client_frame(0x1, b"{}"))
    assert (await server_close(raw))[0] == 1002
    start = time.perf_counter()
    junk = client_frame(0x2, b"x" * 70000) + bytes((0xF3, 0x80)) + b"\x00" * 4  # bad opcode
    raw.writer.write(junk + client_frame(0x8, struct.pack("!H", 1000)))
    assert await asyncio.wait_for(raw.reader.read(), WAIT) == b""  # EOF, not a reset
    assert time.perf_counter() - start < 2.0  # well before the 5 s close timer
