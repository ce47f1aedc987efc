"""RFC 6455 over raw sockets, by the Autobahn test suite's categories that kanal implements:
framing (§5.2), pings and pongs (§5.5.2-§5.5.3), reserved bits and opcodes (§5.2),
fragmentation (§5.4), UTF-8 in text messages (§5.6, §8.1), close handling (§5.5.1, §7) and
message limits (§7.4.1 1009; limits.md §2). Each category is a table of cases written from the
RFC; the client frames are built by tests.wsclient.client_frame, not by kanal.

What kanal does with a message: a text message must be a Pusher envelope, so a text message
that is accepted is a ``pusher:ping`` here and is answered with ``pusher:pong``; binary
messages are ignored (protocol.md §2), so one is followed by a ``pusher:ping`` whose pong
must be the next message. Close codes already covered by tests/test_hardening.py (codes no
endpoint may send, 1-byte payloads, reasons that are not UTF-8, a 64-bit length with the
top bit, the close reply after a failure) are not repeated here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from tests.conftest import APP_KEY, RunningServer, StartServer
from tests.wsclient import TIMEOUT, RawWebSocket, client_frame

PATH = f"/app/{APP_KEY}?protocol=7&client=js&version=8.4.0"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
LIMIT = 1000  # max_frame_bytes of the server in the limit tests


def ping_text(size: int | None = None, pad: str = "") -> bytes:
    """A ``pusher:ping`` envelope carrying ``pad``, padded with JSON whitespace to ``size``."""
    text = json.dumps({"event": "pusher:ping", "data": {"pad": pad}}, ensure_ascii=False)
    raw = text.encode()
    if size is None:
        return raw
    assert size >= len(raw), size
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame; ``rsv`` is the byte of reserved bits (0x40, 0x20, 0x10)."""
    built = client_frame(opcode, payload, fin=fin)
    return bytes((built[0] | rsv,)) + built[1:]


def fragments(opcode: int, payload: bytes, cuts: list[int]) -> list[bytes]:
    """``payload`` as one message of fragments cut at ``cuts``."""
    bounds = [0, *cuts, len(payload)]
    parts = [payload[a:b] for a, b in itertools.pairwise(bounds)]
    return [
        frame(opcode if i == 0 else CONTINUATION, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts)
    ]


# --- the connection ------------------------------------------------------------------------------


@pytest.fixture
async def raw(kanal_server: RunningServer) -> AsyncIterator[RawWebSocket]:
    socket = await RawWebSocket.connect(kanal_server.port, PATH, rcvbuf=1 << 20)
    assert (await socket.read_json())["event"] == "pusher:connection_established"
    yield socket
    socket.close()


@pytest.fixture
async def limited(start_server: StartServer) -> AsyncIterator[RawWebSocket]:
    """A connection to a server whose messages may be at most LIMIT bytes."""
    server = await start_server(max_frame_bytes=LIMIT)
    socket = await RawWebSocket.connect(server.port, PATH, rcvbuf=1 << 20)
    assert (await socket.read_json())["event"] == "pusher:connection_established"
    yield socket
    socket.close()


async def send(socket: RawWebSocket, *frames: bytes, cuts: list[int] | None = None) -> None:
    """Write the frames, in one write or cut into several writes at ``cuts``."""
    data = b"".join(frames)
    bounds = [0, *(cuts or []), len(data)]
    for a, b in itertools.pairwise(bounds):
        socket.writer.write(data[a:b])
        await socket.writer.drain()


async def next_text(socket: RawWebSocket) -> dict[str, object]:
    """The next text message, skipping the Pongs that answer our Pings."""
    while True:
        opcode, payload = await socket.read_frame()
        if opcode == TEXT:
            message: dict[str, object] = orjson.loads(payload)
            return message
        assert opcode == PONG, (opcode, payload)


async def expect_pong(socket: RawWebSocket) -> None:
    """The next message is ``pusher:pong``: everything sent before it was read and accepted."""
    assert (await next_text(socket))["event"] == "pusher:pong"


async def expect_close(socket: RawWebSocket) -> int:
    """The next frame is the server's Close; its code."""
    opcode, payload = await socket.read_frame()
    assert opcode == CLOSE, (opcode, payload[:80])
    return int(struct.unpack("!H", payload[:2])[0])


async def rest_of_stream(socket: RawWebSocket) -> list[tuple[int, bytes]]:
    """Every frame until the server closes TCP."""
    got: list[tuple[int, bytes]] = []
    while True:
        try:
            got.append(await socket.read_frame())
        except asyncio.IncompleteReadError as end:
            assert end.partial == b"", end.partial
            return got


def every_boundary(frame_bytes: bytes, header: int) -> list[int]:
    """Cut points: after every byte of a small frame; of a large one, after each header field
    (first byte, length, extended length, masking key) and in the payload."""
    if len(frame_bytes) <= 140:
        return list(range(1, len(frame_bytes)))
    payload_start = header + 4
    size = len(frame_bytes) - payload_start
    cuts = [1, 2, header, payload_start, payload_start + 1, payload_start + size // 2]
    return sorted({c for c in cuts if 0 < c < len(frame_bytes)} | {len(frame_bytes) - 1})


def header_length(size: int) -> int:
    return 2 if size < 126 else 4 if size < 65536 else 10


# --- framing (§5.2) ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
async def test_message_sizes_split_at_every_boundary(
    raw: RawWebSocket, opcode: int, size: int
) -> None:
    """Payload lengths at the edges of the 7-bit, 16-bit and 64-bit length forms, each frame
    written in pieces cut at every boundary."""
    payload = ping_text(size) if opcode == TEXT and size else b"\x00" * size
    message = frame(opcode, payload)
    await send(raw, message, cuts=every_boundary(message, header_length(size)))
    if opcode == TEXT and not size:
        assert await next_text(raw) == {
            "event": "pusher:error",
            "data": {"code": None, "message": "Invalid JSON"},
        }
        await send(raw, frame(TEXT, ping_text()))
    elif opcode == BINARY:
        await send(raw, frame(TEXT, ping_text()))
    await expect_pong(raw)


# --- pings and pongs (§5.5.2, §5.5.3) ------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125])
async def test_a_ping_is_answered_with_its_payload(raw: RawWebSocket, size: int) -> None:
    payload = bytes(range(size))
    await send(raw, frame(PING, payload))
    assert await raw.read_frame() == (PONG, payload)


async def test_a_ping_over_125_bytes_is_1002(raw: RawWebSocket) -> None:
    await send(raw, frame(PING, b"p" * 126))
    assert await expect_close(raw) == 1002


@pytest.mark.parametrize("size", [0, 125])
async def test_an_unsolicited_pong_is_ignored(raw: RawWebSocket, size: int) -> None:
    await send(raw, frame(PONG, b"u" * size), frame(TEXT, ping_text()))
    assert await raw.read_frame() == (TEXT, b'{"event":"pusher:pong","data":"{}"}')


async def test_pings_in_one_write_are_answered_in_order(raw: RawWebSocket) -> None:
    await send(raw, *(frame(PING, b"%d" % i) for i in range(10)))
    assert [await raw.read_frame() for _ in range(10)] == [(PONG, b"%d" % i) for i in range(10)]


# --- reserved bits and opcodes (§5.2) ------------------------------------------------------------


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70], ids=["rsv1", "rsv2", "rsv3", "all"])
@pytest.mark.parametrize(
    "opcode",
    [TEXT, BINARY, PING, CLOSE, CONTINUATION],
    ids=["text", "binary", "ping", "close", "cont"],
)
async def test_reserved_bits_are_1002(raw: RawWebSocket, rsv: int, opcode: int) -> None:
    """No extension is negotiated, so any reserved bit fails the connection, and nothing sent
    after that frame is answered."""
    payload = struct.pack("!H", 1000) if opcode == CLOSE else ping_text()
    await send(raw, frame(opcode, payload, rsv=rsv), frame(TEXT, ping_text()), frame(PING))
    assert await expect_close(raw) == 1002


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
@pytest.mark.parametrize("where", ["alone", "mid-message", "no payload"])
async def test_reserved_opcodes_are_1002(raw: RawWebSocket, opcode: int, where: str) -> None:
    reserved = frame(opcode, b"" if where == "no payload" else b"reserved")
    before = [frame(TEXT, b'{"event":', fin=False)] if where == "mid-message" else []
    await send(raw, *before, reserved, frame(TEXT, ping_text()))
    assert await expect_close(raw) == 1002


# --- fragmentation (§5.4) ------------------------------------------------------------------------

PING_TEXT = ping_text()


@dataclass(frozen=True)
class Case:
    frames: list[bytes]
    answer: str | int  # "pong": the message was accepted; "ignored"; or the close code


FRAGMENTATION = {
    "two fragments": Case(fragments(TEXT, PING_TEXT, [5]), "pong"),
    "one byte each": Case(fragments(TEXT, PING_TEXT, list(range(1, len(PING_TEXT)))), "pong"),
    "empty first and last": Case(fragments(TEXT, PING_TEXT, [0, len(PING_TEXT)]), "pong"),
    "empty in between": Case(fragments(TEXT, PING_TEXT, [3, 3, 3]), "pong"),
    "ping between": Case(
        [
            *fragments(TEXT, PING_TEXT, [4])[:1],
            frame(PING, b"!"),
            frame(CONTINUATION, PING_TEXT[4:]),
        ],
        "pong",
    ),
    "pongs between": Case(
        [
            frame(TEXT, PING_TEXT[:2], fin=False),
            frame(PONG),
            frame(CONTINUATION, PING_TEXT[2:9], fin=False),
            frame(PONG, b"x" * 125),
            frame(CONTINUATION, PING_TEXT[9:]),
        ],
        "pong",
    ),
    "binary in fragments": Case(fragments(BINARY, b"\xff" * 300, [1, 150]), "ignored"),
    "close between": Case([frame(TEXT, b"{", fin=False), frame(CLOSE, b"\x03\xe8")], 1000),
    "continuation first": Case([frame(CONTINUATION, PING_TEXT)], 1002),
    "continuation first, not final": Case([frame(CONTINUATION, b"{", fin=False)], 1002),
    "continuation after a whole message": Case(
        [frame(TEXT, PING_TEXT), frame(CONTINUATION, b" ")], 1002
    ),
    "text inside a text": Case([frame(TEXT, b"{", fin=False), frame(TEXT, PING_TEXT)], 1002),
    "binary inside a text": Case([frame(TEXT, b"{", fin=False), frame(BINARY, b"x")], 1002),
    "text inside a binary": Case([frame(BINARY, b"x", fin=False), frame(TEXT, PING_TEXT)], 1002),
    "fragmented ping": Case([frame(PING, b"a", fin=False), frame(CONTINUATION, b"b")], 1002),
    "fragmented pong": Case([frame(PONG, b"a", fin=False), frame(CONTINUATION, b"b")], 1002),
    "fragmented close": Case(
        [frame(CLOSE, b"\x03", fin=False), frame(CONTINUATION, b"\xe8")], 1002
    ),
}


@pytest.mark.parametrize("case", FRAGMENTATION.values(), ids=FRAGMENTATION.keys())
async def test_fragmentation(raw: RawWebSocket, case: Case) -> None:
    await send(raw, *case.frames)
    if case.answer == "pong":
        await expect_pong(raw)
    elif case.answer == "ignored":
        await send(raw, frame(TEXT, PING_TEXT))
        await expect_pong(raw)
    else:
        assert await expect_close(raw) == case.answer


async def test_each_fragment_in_its_own_write(raw: RawWebSocket) -> None:
    parts = fragments(TEXT, PING_TEXT, [1, 2, 10, 20])
    await send(raw, *parts, cuts=[sum(map(len, parts[: i + 1])) for i in range(len(parts) - 1)])
    await expect_pong(raw)


# --- UTF-8 (§5.6, §8.1) --------------------------------------------------------------------------

VALID = ["é", "€", "𝄞", "\U0010ffff", "\ufeff", "\uffff", "\u07ff", "\ud7ff", "\ue000"]


@pytest.mark.parametrize("char", VALID, ids=[f"U+{ord(c):04X}" for c in VALID])
async def test_a_code_point_split_across_fragments_is_accepted(
    raw: RawWebSocket, char: str
) -> None:
    """The message is checked once whole: a code point cut at any of its bytes is fine."""
    text = ping_text(pad=f"a{char}b")
    start = text.index(char.encode())
    for cut in range(start + 1, start + len(char.encode())):
        await send(raw, *fragments(TEXT, text, [cut]))
        await expect_pong(raw)
    await send(raw, *fragments(TEXT, text, list(range(1, len(text)))))  # every byte apart
    await expect_pong(raw)


INVALID = {
    "lone continuation byte": b"\x80",
    "overlong slash": b"\xc0\xaf",
    "overlong 3-byte": b"\xe0\x80\xaf",
    "overlong 4-byte": b"\xf0\x80\x80\xaf",
    "surrogate U+D800": b"\xed\xa0\x80",
    "surrogate U+DFFF": b"\xed\xbf\xbf",
    "above U+10FFFF": b"\xf4\x90\x80\x80",
    "byte 0xFF": b"\xff",
    "bad second byte": b"\xe2\x28\xa1",
    "cut short at the end": b"\xf0\x9d\x84",
}


@pytest.mark.parametrize("fragmented", [False, True], ids=["one frame", "split in it"])
@pytest.mark.parametrize("sequence", INVALID.values(), ids=INVALID.keys())
async def test_invalid_utf8_is_1007(raw: RawWebSocket, sequence: bytes, fragmented: bool) -> None:
    text = b'{"event":"pusher:ping","data":{"pad":"a' + sequence
    text += b'"}}' if sequence != INVALID["cut short at the end"] else b""
    at = text.index(sequence) + 1
    await send(raw, *(fragments(TEXT, text, [at]) if fragmented else [frame(TEXT, text)]))
    assert await expect_close(raw) == 1007


# --- close handling (§5.5.1, §7.1) ---------------------------------------------------------------

CLOSES = {
    "no payload: 1000": Case([frame(CLOSE)], 1000),
    "125-byte payload": Case([frame(CLOSE, struct.pack("!H", 4000) + b"r" * 123)], 4000),
    "126-byte payload": Case(  # failed; then the client's Close ends TCP
        [frame(CLOSE, struct.pack("!H", 4000) + b"r" * 124), frame(CLOSE)], 1002
    ),
    "close after close": Case([frame(CLOSE, b"\x03\xe8"), frame(CLOSE, b"\x03\xe9")], 1000),
    "messages after close": Case(
        [frame(CLOSE, b"\x03\xe9"), frame(TEXT, PING_TEXT), frame(PING, b"p")], 1001
    ),
    "a bad frame after close": Case([frame(CLOSE, b"\x03\xe8"), frame(TEXT, b"x", rsv=0x40)], 1000),
    "messages after a failure": Case(
        [frame(TEXT, b"x", rsv=0x40), frame(TEXT, PING_TEXT), frame(PING, b"p"), frame(CLOSE)],
        1002,
    ),
}


@pytest.mark.parametrize("case", CLOSES.values(), ids=CLOSES.keys())
async def test_close_handling(raw: RawWebSocket, case: Case) -> None:
    """Exactly one Close comes back, and then the end of the TCP stream: nothing after the
    first Close (or after the frame that failed the connection) is acted on."""
    await send(raw, *case.frames)
    [(opcode, payload)] = await asyncio.wait_for(rest_of_stream(raw), TIMEOUT)
    assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == case.answer


# --- limits (§7.4.1 1009; limits.md §2) ----------------------------------------------------------


def header_only(opcode: int, size: int, *, fin: bool = True) -> bytes:
    """A frame header announcing ``size`` bytes, with its masking key and no payload."""
    full = client_frame(opcode, b"", fin=fin)[:1]
    if size < 126:
        return full + bytes((0x80 | size,)) + b"mask"
    if size < 65536:
        return full + b"\xfe" + struct.pack("!H", size) + b"mask"
    return full + b"\xff" + struct.pack("!Q", size) + b"mask"


LIMITS = {
    "text at the limit": Case([frame(TEXT, ping_text(LIMIT))], "pong"),
    "fragments at the limit": Case(fragments(TEXT, ping_text(LIMIT), [LIMIT // 2]), "pong"),
    "binary at the limit": Case([frame(BINARY, b"b" * LIMIT)], "ignored"),
    "text one byte over, header only": Case([header_only(TEXT, LIMIT + 1)], 1009),
    "binary one byte over, header only": Case([header_only(BINARY, LIMIT + 1)], 1009),
    "64-bit length, header only": Case([header_only(TEXT, 1 << 40)], 1009),
    "fragments over, second header only": Case(
        [frame(TEXT, b"{" * (LIMIT // 2), fin=False), header_only(CONTINUATION, LIMIT // 2 + 1)],
        1009,
    ),
    "a ping between fragments does not count": Case(
        [
            frame(TEXT, ping_text(LIMIT)[:10], fin=False),
            frame(PING, b"p" * 125),
            frame(CONTINUATION, ping_text(LIMIT)[10:]),
        ],
        "pong",
    ),
}


@pytest.mark.parametrize("case", LIMITS.values(), ids=LIMITS.keys())
async def test_message_limit(limited: RawWebSocket, case: Case) -> None:
    """A message over max_frame_bytes is refused with 1009 as soon as a header announces it:
    the payload is never waited for."""
    await send(limited, *case.frames)
    if case.answer == "pong":
        await expect_pong(limited)
    elif case.answer == "ignored":
        await send(limited, frame(TEXT, PING_TEXT))
        await expect_pong(limited)
    else:
        assert await expect_close(limited) == case.answer
