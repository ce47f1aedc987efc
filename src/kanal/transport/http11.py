"""A small HTTP/1.1 server on asyncio protocols, with httptools (llhttp) as the parser.

Ownership rule: this module owns HTTP connections: parsing, keep-alive, pipelining order,
body limits, idle timeouts and the hand-over of an upgraded connection to the WebSocket
code. It knows no routes: every request goes to one ``dispatch`` coroutine, and a request
that asks to upgrade goes to ``upgrade`` with the transport.

Why not aiohttp's server (docs/design.md, "Transport"): a WebSocket connection is kept for
hours but its HTTP request lasts a moment. Here, once the 101 is written, this object and
its parser are dropped and the socket belongs to one small protocol object, which is what
holds kanal's memory per idle connection and its per-request CPU down (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools

__all__ = ["HttpConnection", "HttpServer", "Request", "Response"]

log = logging.getLogger("kanal.http")

_MAX_PIPELINED = 16  # requests parsed ahead of their responses before reading pauses
MAX_HEAD_BYTES = 64 * 1024  # request line plus headers; more is refused with 431 (RFC 6585 §5)
# After refusing a request, keep reading (and dropping) what the client still sends for this
# long before closing: closing with unread data would reset the connection and could destroy
# the answer before the client reads it (RFC 9112 §9.6, "lingering close").
LINGER_SECONDS = 2.0
_REASONS = {status.value: status.phrase for status in HTTPStatus}


@dataclass(slots=True)
class Request:
    """One parsed request; header names are lower-case (repeated headers joined by ", ")."""

    method: str
    path: str  # raw (still percent-encoded), without the query
    query_string: str
    headers: dict[str, str]
    body: bytes = b""
    secure: bool = False
    match: dict[str, str] = field(default_factory=dict)

    @property
    def query(self) -> dict[str, str]:
        """Decoded query parameters; the last of a repeated name wins."""
        return dict(self.query_items)

    @property
    def query_items(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query_string, keep_blank_values=True)


@dataclass(slots=True, frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, keep_alive: bool, head: bool = False) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, '')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else self.body)


Dispatch = Callable[[Request], Awaitable[Response]]
#: takes the request, the transport and any bytes read past the request head
Upgrade = Callable[[Request, asyncio.Transport, bytes], None]


class HttpServer:
    """Shared state of every connection: handlers, limits and the set of open connections."""

    def __init__(
        self, dispatch: Dispatch, upgrade: Upgrade, *, max_body: int, idle_timeout: float
    ) -> None:
        self.dispatch = dispatch
        self.upgrade = upgrade
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.connections: set[HttpConnection] = set()
        self.closing = False
        self.idle = asyncio.Event()  # set while no request is being answered
        self.idle.set()
        self._answering = 0

    def answering(self, delta: int) -> None:
        self._answering += delta
        if self._answering:
            self.idle.clear()
        else:
            self.idle.set()

    def protocol(self) -> HttpConnection:
        return HttpConnection(self)

    def close_idle(self) -> None:
        """Shutdown: close keep-alive connections with nothing in flight."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()

    def abort_all(self) -> None:
        for connection in list(self.connections):
            connection.abort()


class HttpConnection(asyncio.Protocol):
    """One client connection until it closes or upgrades."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser: Any = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._request: Request | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._rejected = False
        self._in_head = False  # a request head has begun and is not complete yet
        self._head_bytes = 0  # bytes read while in a head (a partial header line too)
        self._queue: deque[tuple[Request, bool]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._hand_over(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError:
            self._fail(400, "Malformed HTTP request")
            return
        if self._in_head:
            # httptools keeps an unfinished header line to itself, so the head limit counts
            # every byte read while a head is open: a line that never ends is refused after
            # MAX_HEAD_BYTES, not buffered until the idle timeout. (A read that finishes one
            # request and starts the next counts whole: exact to within one read.)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(431, "Request header fields too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._disarm_idle()
        self._parser = None
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", [], [], 0
        self._in_head, self._head_bytes = True, 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._size += size
        if self._size > MAX_HEAD_BYTES:
            self._fail(431, "Request header fields too large")

    def on_headers_complete(self) -> None:
        self._size = 0  # from here on it counts the body
        self._in_head = False
        if self._rejected or self._parser is None:
            return
        refused = self._refused_head()
        if refused is not None:
            self._fail(400, refused)
            return
        headers: dict[str, str] = {}
        for name, value in self._headers:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        url = httptools.parse_url(self._url)
        self._request = Request(
            method=self._parser.get_method().decode("latin-1"),
            path=(url.path or b"/").decode("latin-1"),
            query_string=(url.query or b"").decode("latin-1"),
            headers=headers,
            secure=self._transport is not None
            and self._transport.get_extra_info("sslcontext") is not None,
        )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self._server.max_body:
            self._fail(413, f"Request body over {self._server.max_body} bytes")
        elif headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _refused_head(self) -> str | None:
        """RFC 9112 §3.2: exactly one Host in HTTP/1.1 (at most one in 1.0); RFC 6455 §4.1:
        an upgrade needs HTTP/1.1."""
        version = self._parser.get_http_version()
        hosts = sum(1 for name, _ in self._headers if name == "host")
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            return "Exactly one Host header is required"
        if self._parser.should_upgrade() and version != "1.1":
            return "WebSocket upgrades need HTTP/1.1"
        return None

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._server.max_body:
            self._fail(413, f"Request body over {self._server.max_body} bytes")
        elif not self._rejected:
            self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        if request is None or self._rejected or self._parser is None:
            return
        if self._parser.should_upgrade():
            return  # handed over when the parser raises HttpParserUpgrade
        self._disarm_idle()
        request.body = b"".join(self._body)
        self._body = []
        self._queue.append((request, bool(self._parser.should_keep_alive())))
        if len(self._queue) >= _MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
        if self._worker is None:
            self._server.answering(+1)
            self._worker = asyncio.get_running_loop().create_task(self._respond())

    # --- responses -------------------------------------------------------------------------

    async def _respond(self) -> None:
        """Answer queued requests one at a time, in order (RFC 9112 §9.3.2)."""
        try:
            while self._queue and self._transport is not None:
                request, keep_alive = self._queue.popleft()
                response = await self._answer(request)
                transport = self._transport
                if transport.is_closing():
                    return
                keep_alive = keep_alive and not self._server.closing
                transport.write(response.encode(keep_alive, head=request.method == "HEAD"))
                if not keep_alive:
                    transport.close()
                    return
                transport.resume_reading()
        finally:
            self._worker = None
            self._server.answering(-1)
        if self._server.closing:
            self.close_if_idle()
        else:
            self._arm_idle()

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._server.dispatch(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return Response(500, b"Internal server error")

    def _fail(self, status: int, message: str) -> None:
        """Answer a request that cannot be read and close: its framing can no longer be
        trusted, so nothing after it on this connection can be either. What the client still
        sends is dropped unread (``data_received`` without a parser) until it closes too or
        :data:`LINGER_SECONDS` pass."""
        self._rejected = True
        self._parser = None
        self._in_head = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(Response(status, message.encode()).encode(keep_alive=False))
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()
        self._disarm_idle()
        self._idle = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def _hand_over(self, rest: bytes) -> None:
        request, transport = self._request, self._transport
        self._parser = None  # drop the parser (and its reference cycle to us) for good
        self._server.connections.discard(self)
        self._disarm_idle()
        if request is None or transport is None:
            return
        self._server.upgrade(request, transport, rest)

    # --- timeouts and shutdown -------------------------------------------------------------

    def _arm_idle(self) -> None:
        self._disarm_idle()
        timeout = self._server.idle_timeout
        if timeout > 0:
            self._idle = asyncio.get_running_loop().call_later(timeout, self.close_if_idle)

    def _disarm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def close_if_idle(self) -> None:
        """Idle timeout (also bounds a client that sends a request head too slowly)."""
        if self._worker is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
