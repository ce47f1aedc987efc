"""The HTTP/1.1 connection handling (kanal.transport.http11) against a real server over raw
sockets: keep-alive, pipelining, chunked bodies, 100-continue, limits, malformed requests,
idle timeouts and refused WebSocket upgrades (RFC 9112, RFC 6455 §4.2)."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import httptools
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import kanal.transport.listener
from kanal.protocol.signatures import sign_request
from kanal.transport.http_messages import parse_query, split_target
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer, StartServer
from tests.wsclient import RawWebSocket, client_frame

WAIT = 5.0


class Raw:
    """One client socket that writes raw bytes and reads whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), WAIT) if length else b""
        return status, headers, body

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), WAIT) == b""


@pytest.fixture
async def raw(kanal_server: RunningServer) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_connection("127.0.0.1", kanal_server.port)
    yield Raw(reader, writer)
    writer.close()


def trigger(body: bytes, *, chunked: bool = False, extra: str = "") -> bytes:
    path = f"/apps/{APP_ID}/events"
    query = sign_request(
        method="POST",
        path=path,
        params={},
        body=body,
        app_key=APP_KEY,
        app_secret=APP_SECRET,
        timestamp=int(time.time()),
    )
    head = f"POST {path}?{urllib.parse.urlencode(query)} HTTP/1.1\r\nHost: x\r\n{extra}"
    if not chunked:
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    half = len(body) // 2
    chunks = [body[:half], body[half:]]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + encoded


EVENT = orjson.dumps({"name": "e", "channels": ["c"], "data": "{}"})


async def test_keep_alive_serves_several_requests_on_one_connection(raw: Raw) -> None:
    for _ in range(3):
        raw.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await raw.response()
        assert (status, orjson.loads(body)) == (200, {"ok": True})
        assert "connection" not in headers


async def test_pipelined_requests_are_answered_in_order(raw: Raw) -> None:
    raw.writer.write(trigger(EVENT) + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n" + trigger(EVENT))
    assert [(await raw.response())[0] for _ in range(3)] == [200, 404, 200]


@pytest.mark.parametrize(
    ("refused", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
    ],
    ids=["malformed", "no Host", "body too large"],
)
async def test_a_refusal_pipelined_behind_requests_comes_after_their_answers(
    raw: Raw, refused: bytes, status: int
) -> None:
    raw.writer.write(trigger(EVENT) + trigger(EVENT) + refused)
    assert [(await raw.response())[0] for _ in range(3)] == [200, 200, status]
    assert await raw.closed_by_server()


async def test_a_100_continue_pipelined_comes_after_the_answers_before_it(raw: Raw) -> None:
    head, body = trigger(EVENT, extra="Expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
    raw.writer.write(trigger(EVENT) + head + b"\r\n\r\n")
    assert [(await raw.response())[0] for _ in range(2)] == [200, 100]
    raw.writer.write(body)
    assert (await raw.response())[0] == 200


async def test_an_upgrade_pipelined_behind_a_request_is_handed_over_after_its_answer(
    raw: Raw,
) -> None:
    upgrade = (
        f"GET /app/{APP_KEY}?protocol=7&client=js&version=8.4.0 HTTP/1.1\r\nHost: x\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    ping = client_frame(0x1, b'{"event":"pusher:ping","data":{}}')
    raw.writer.write(trigger(EVENT) + upgrade.encode() + ping)  # the ping waits for the 101
    assert [(await raw.response())[0] for _ in range(2)] == [200, 101]
    socket = RawWebSocket(raw.reader, raw.writer)
    assert (await socket.read_json())["event"] == "pusher:connection_established"
    assert (await socket.read_json())["event"] == "pusher:pong"


async def test_chunked_body_is_read(raw: Raw) -> None:
    raw.writer.write(trigger(EVENT, chunked=True))
    status, _, body = await raw.response()
    assert (status, body) == (200, b"{}")


async def test_expect_continue_gets_an_interim_100(raw: Raw) -> None:
    raw.writer.write(trigger(EVENT, extra="Expect: 100-continue\r\n"))
    assert (await raw.response())[0] == 100
    assert (await raw.response())[0] == 200


async def test_connection_close_and_http_1_0_are_honoured(kanal_server: RunningServer) -> None:
    for request in (
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", kanal_server.port)
        client = Raw(reader, writer)
        writer.write(request)
        status, headers, _ = await client.response()
        assert (status, headers["connection"]) == (200, "close")
        assert await client.closed_by_server()
        writer.close()


async def test_wrong_method_is_405(raw: Raw) -> None:
    raw.writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert (await raw.response())[0] == 405


async def test_malformed_request_is_400_and_closed(raw: Raw) -> None:
    raw.writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    assert (await raw.response())[0] == 400
    assert await raw.closed_by_server()


async def test_chunked_body_over_the_limit_is_413(start_server: StartServer) -> None:
    server = await start_server(max_request_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = Raw(reader, writer)
    writer.write(trigger(b"x" * 3000, chunked=True))
    assert (await client.response())[0] == 413
    assert await client.closed_by_server()
    writer.close()


async def test_idle_connections_are_closed(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kanal.transport.listener, "HTTP_IDLE_TIMEOUT", 0.2)
    server = await start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = Raw(reader, writer)
    writer.write(b"GET / HTTP/1.1\r\n")  # a request head that never ends
    assert await client.closed_by_server()
    writer.close()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", 426),
        ("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n", 400),
        ("Sec-WebSocket-Version: 13\r\n", 400),
    ],
)
async def test_bad_websocket_upgrades_are_refused(raw: Raw, headers: str, status: int) -> None:
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    raw.writer.write(f"GET /app/{APP_KEY} HTTP/1.1\r\nHost: x\r\n{upgrade}{headers}\r\n".encode())
    assert (await raw.response())[0] == status
    assert await raw.closed_by_server()


async def test_plain_get_on_the_websocket_path_is_426(raw: Raw) -> None:
    raw.writer.write(f"GET /app/{APP_KEY} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await raw.response())[0] == 426


async def test_oversized_request_head_is_431_and_closed(raw: Raw) -> None:
    filler = "".join(f"X-Filler-{i}: {'y' * 1000}\r\n" for i in range(80))  # 80 KB of headers
    raw.writer.write(f"GET / HTTP/1.1\r\nHost: x\r\n{filler}\r\n".encode())
    assert (await raw.response())[0] == 431
    assert await raw.closed_by_server()


async def test_upgrade_to_another_protocol_is_400(raw: Raw) -> None:
    raw.writer.write(
        f"GET /app/{APP_KEY} HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    assert (await raw.response())[0] == 400


@given(st.text(alphabet=st.sampled_from("ab=&%+;2F41 é\x00"), max_size=40) | st.text(max_size=40))
def test_parse_query_is_parse_qsl(query_string: str) -> None:
    expected = parse_qsl(query_string, keep_blank_values=True)
    assert parse_query(query_string) == expected


@given(st.binary(max_size=30).map(lambda tail: b"/" + tail))
def test_split_target_is_httptools_parse_url(target: bytes) -> None:
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        with pytest.raises(httptools.HttpParserInvalidURLError):
            split_target(target)
        return
    expected = ((url.path or b"/").decode("latin-1"), (url.query or b"").decode("latin-1"))
    assert split_target(target) == expected


async def test_a_streamed_response_is_chunked_and_the_connection_is_kept(
    kanal_server: RunningServer, raw: Raw
) -> None:
    """RFC 9112 §7.1: a streamed body (``Response.stream``: an HTTP session's receive
    stream, here a refused one) goes out in chunks with a last chunk, then the next request
    on the same connection is answered."""
    raw.writer.write(
        b"POST /pusher/app/no-such-key/1/abcdefgh/xhr_streaming HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
    assert b"Content-Length" not in head
    body = b""
    while True:
        size = int(await asyncio.wait_for(raw.reader.readuntil(b"\r\n"), WAIT), 16)
        chunk = await asyncio.wait_for(raw.reader.readexactly(size + 2), WAIT)
        if size == 0:
            break
        body += chunk[:-2]
    assert body.startswith(b"o\n") and body.endswith(b'c[4001,"Application does not exist"]\n')
    raw.writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await raw.response()
    assert status == 200
