"""Raw subscribers over kanal's HTTP streaming transport (pusher-js's ``xhr_streaming``).

The same :class:`~bench.wsclient.Subscriber` state machine as the WebSocket subscribers, fed
from one long POST response per connection: ``{prefix}/pusher/app/{key}/{server}/{session}/
xhr_streaming``, read as HTTP/1.1 chunks whose lines are frames (``o``, ``a[...]``, ``h``,
``c[...]``, src/kanal/protocol/xhr.py). What the subscriber sends (its subscriptions, pongs)
is POSTed to ``.../xhr_send`` on a keep-alive connection pool shared by the process, as
pusher-js posts each message. An asyncio protocol, not an HTTP client library, reads the
stream: the generator must not be the bottleneck.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import aiohttp
import orjson

from bench.protocol import Target
from bench.wsclient import Closer, Subscriber

__all__ = ["close_pool", "connect_xhr"]

_pool: aiohttp.ClientSession | None = None


def _session() -> aiohttp.ClientSession:
    global _pool  # one pool per generator process (its event loop)
    if _pool is None or _pool.closed:
        _pool = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    return _pool


async def close_pool() -> None:
    """Close the process's send pool (the worker's ``close`` command)."""
    global _pool
    if _pool is not None:
        await _pool.close()
        _pool = None


class _Stream(asyncio.Protocol):
    """The receive stream: response head, then chunks, then lines; one frame per line."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.transport: asyncio.Transport | None = None
        self.head = True  # reading the response head
        self.buffer = b""  # unparsed chunk framing
        self.line = b""  # an unfinished line
        self.need = 0  # bytes of chunk data still to read (then its CRLF)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.head:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 200"):
                self._fail(self.buffer[:end].decode(errors="replace"))
                return
            self.head, self.buffer = False, self.buffer[end + 4 :]
        self._chunks()

    def _chunks(self) -> None:
        buffer = self.buffer
        while buffer:
            if self.need > 0:
                piece = buffer[: self.need]
                self.need -= len(piece)
                buffer = buffer[len(piece) :]
                self._lines(piece)
                if self.need == 0:
                    self.need = -2  # the CRLF after the data
                continue
            if self.need < 0:  # skip the CRLF that ends a chunk's data
                skip = min(-self.need, len(buffer))
                buffer, self.need = buffer[skip:], self.need + skip
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            self.need = int(buffer[:end], 16)
            buffer = buffer[end + 2 :]
            if self.need == 0:  # the last chunk: the session is over
                self._fail("stream ended")
                return
        self.buffer = buffer

    def _lines(self, data: bytes) -> None:
        self.line += data
        *lines, self.line = self.line.split(b"\n")
        for line in lines:
            if line.startswith(b"a"):
                for message in orjson.loads(line[1:]):
                    self.sub.feed(message.encode())
            elif line.startswith(b"c"):
                self._fail(line.decode(errors="replace"))

    def _fail(self, why: str) -> None:
        if not self.sub.ready.done():
            self.sub.ready.set_exception(ConnectionError(why[:200]))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sub.lost()


async def connect_xhr(target: Target, sub: Subscriber, wait_s: float) -> Closer:
    """Open ``sub``'s stream and wait until all its subscriptions succeeded."""
    session = f"{secrets.randbelow(1000)}/{secrets.token_hex(4)}"
    path = f"/pusher/app/{target.key}/{session}"
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(lambda: _Stream(sub), target.host, target.port)
    transport.write(
        f"POST {path}/xhr_streaming?protocol=7&client=bench&version=1 HTTP/1.1\r\n"
        f"Host: {target.host}:{target.port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    send_url = f"http://{target.host}:{target.port}{path}/xhr_send"

    async def post(data: bytes) -> None:
        body = orjson.dumps([data.decode()])
        async with _session().post(send_url, data=body) as response:
            await response.read()

    def send(data: bytes) -> None:
        loop.create_task(post(data)).add_done_callback(_quiet)

    sub.send = send
    try:
        await asyncio.wait_for(asyncio.shield(sub.ready), wait_s)
    except BaseException:
        transport.abort()
        raise
    return transport.abort


def _quiet(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
