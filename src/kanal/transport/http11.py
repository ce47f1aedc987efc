"""A small HTTP/1.1 server on asyncio protocols, with httptools (llhttp) as the parser.

Ownership rule: this module owns HTTP connections: parsing, keep-alive, pipelining order,
body limits, idle timeouts, streamed response bodies (chunked, ``Response.stream``:
pusher-js's HTTP transports) and the hand-over of an upgraded connection to the WebSocket
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
from typing import Any, cast

import httptools

from kanal.transport import eager
from kanal.transport.http_messages import Request, Response, split_target

__all__ = ["HttpConnection", "HttpServer", "Request", "Response"]

log = logging.getLogger("kanal.http")

_MAX_PIPELINED = 16  # requests parsed ahead of their responses before reading pauses
MAX_HEAD_BYTES = 64 * 1024  # request line plus headers; more is refused with 431 (RFC 6585 §5)
# After refusing a request, keep reading (and dropping) what the client still sends for this
# long before closing: closing with unread data would reset the connection and could destroy
# the answer before the client reads it (RFC 9112 §9.6, "lingering close").
LINGER_SECONDS = 2.0
_FAILED = Response(500, b"Internal server error")


Dispatch = Callable[[Request], Awaitable[Response]]
#: takes the request, the transport and any bytes read past the request head
Upgrade = Callable[[Request, asyncio.Transport, bytes], None]


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], int]:
    """Header names lower-cased, repeated ones joined with ", " (RFC 9110 §5.3); and how
    many Host fields there were. One dict comprehension when no name repeats (the usual
    case), the joining loop only when one does."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
    if len(headers) == len(raw):
        return headers, int("host" in headers)
    headers, hosts = {}, 0
    for name_bytes, value_bytes in raw:
        name, value = name_bytes.decode("latin-1").lower(), value_bytes.decode("latin-1")
        hosts += name == "host"
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers, hosts


class HttpServer:
    """Shared state of every connection: handlers, limits and the set of open connections."""

    def __init__(
        self,
        dispatch: Dispatch,
        upgrade: Upgrade,
        *,
        max_body: int,
        idle_timeout: float,
        eager: bool = False,
    ) -> None:
        self.dispatch = dispatch
        # Answer in the reading callback when ``dispatch`` does not wait (eager.py). Only for
        # a dispatch that never needs a current task before its first wait: asyncio.timeout
        # does, so the Redis adapters' calls rule it out; memory mode's path has none.
        self.eager = eager
        self.upgrade = upgrade
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.connections: set[HttpConnection] = set()
        self.closing = False
        self._answering = 0  # requests being answered
        # Made only when a shutdown waits: an event set and cleared around every request
        # would cost each request two calls for the sake of one wait at the end.
        self._idle: asyncio.Event | None = None

    def answering(self, delta: int) -> None:
        self._answering += delta
        if not self._answering and self._idle is not None:
            self._idle.set()
            self._idle = None

    @property
    def is_idle(self) -> bool:
        return not self._answering

    async def wait_idle(self) -> None:
        """Until no request is being answered."""
        while self._answering:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

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


class _ChunkedBody:
    """A streamed response's body on the connection: one chunk per write (RFC 9112 §7.1)."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()


class HttpConnection(asyncio.Protocol):
    """One client connection until it closes or upgrades.

    Whatever must wait for the answers to the requests before it (RFC 9112 §9.3.2: answers
    go in the order of the requests) waits: a refusal, the hand-over of an upgrade and a
    ``100 Continue`` are written once the worker has answered everything queued before them.
    """

    __slots__ = (
        "_body",
        "_client",
        "_continue_due",
        "_head_began",
        "_head_bytes",
        "_head_size",
        "_headers",
        "_idle",
        "_idle_deadline",
        "_in_head",
        "_loop",
        "_parser",
        "_queue",
        "_refusal",
        "_rejected",
        "_request",
        "_secure",
        "_server",
        "_size",
        "_transport",
        "_upgrade_rest",
        "_url",
        "_worker",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        # Python 3.11's get_running_loop() makes a getpid() system call each time (3.12
        # dropped it): the loop is looked up once per connection, not per request.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = ""  # the peer's address, once connected
        self._parser: Any = httptools.HttpRequestParser(self)
        self._secure = False  # TLS: known once connected
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []  # as read; decoded once, when complete
        self._request: Request | None = None
        self._body: list[bytes] = []
        self._size = 0  # body bytes of the current request
        self._head_size = 0  # URL and header field bytes of the current request, trailers too
        self._rejected = False
        # In a request head, or in a chunked body's size lines and trailer section: reading
        # lines, which httptools keeps to itself (an unfinished one) until they end.
        self._in_head = False
        self._head_began = False  # ... and that began in the read being parsed
        self._head_bytes = 0  # bytes read in later reads while still there
        self._queue: deque[tuple[Request, bool]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None  # the idle timer, or the linger
        self._idle_deadline: float | None = None  # loop time the idle timer closes at
        # waiting for the worker to answer the requests before them:
        self._refusal: Response | None = None
        self._upgrade_rest: bytes | None = None  # bytes read past the upgrade request
        self._continue_due = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) and peer else ""
        self._secure = transport.get_extra_info("sslcontext") is not None
        self._server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            if self._upgrade_rest is not None:  # read before the pause took effect
                self._upgrade_rest += data
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if not self._rejected:
                self._upgrade(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError:
            self._fail(400, "Malformed HTTP request")
            return
        if not self._in_head:
            return
        if self._head_began:
            # The read that began a head may also have ended a body; how much of it is head
            # is unknown, so the count starts with the next read and never exceeds the head.
            self._head_began = False
            return
        # httptools keeps an unfinished header line to itself, so the head limit counts every
        # later read made while the head is open: a line that never ends is refused after
        # MAX_HEAD_BYTES (httptools holding at most one read more), not buffered until the
        # idle timeout.
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail(431, "Request header fields too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._cancel_timer()
        self._parser = None
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    # --- httptools callbacks (none acts once the request is refused) ------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", [], [], 0
        self._request, self._head_size, self._continue_due = None, 0, False
        self._begin_head()

    def _begin_head(self) -> None:
        """A head, a chunk-size line or a trailer section begins: each has its own limit (the
        request head's fields and a trailer section's are not added up)."""
        self._in_head, self._head_began, self._head_bytes = True, True, 0
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        if not self._rejected:
            self._url += url
            self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """A header field, or a trailer field of a chunked body (counted alike, not used)."""
        if not self._rejected:
            if self._request is None:  # a trailer field comes after the head: not kept
                self._headers.append((name, value))
            self._head_size += len(name) + len(value)
            if self._head_size > MAX_HEAD_BYTES:
                self._fail(431, "Request header fields too large")

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            self._fail(431, "Request header fields too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._rejected or self._parser is None:
            return
        headers, hosts = _decode_headers(self._headers)
        refused = self._refused_head(hosts)
        if refused is not None:
            self._fail(400, refused)
            return
        path, query = split_target(self._url)
        self._request = Request(
            self._parser.get_method().decode("latin-1"),
            path,
            query,
            headers,
            secure=self._secure,
            client=self._client,
        )
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._begin_head()  # the first chunk's size line
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self._server.max_body:
            self._fail(413, f"Request body over {self._server.max_body} bytes")
        elif headers.get("expect", "").lower() == "100-continue":
            if self._worker is None:
                self._write_continue()
            else:  # it would be taken for an answer to a request before this one
                self._continue_due = True

    def _refused_head(self, hosts: int) -> str | None:
        """RFC 9112 §3.2: exactly one Host in HTTP/1.1 (at most one in 1.0); RFC 6455 §4.1:
        an upgrade needs HTTP/1.1."""
        version = self._parser.get_http_version()
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            return "Exactly one Host header is required"
        if self._parser.should_upgrade() and version != "1.1":
            return "WebSocket upgrades need HTTP/1.1"
        return None

    def on_chunk_header(self) -> None:
        """A chunk's size line has been read. After the last one come the trailer fields,
        which httptools keeps to itself like a head's: like the size lines (whose extensions
        are passed over unread), they count against the head limit."""
        self._begin_head()

    def on_chunk_complete(self) -> None:
        self._begin_head()  # the next size line, or the end of the trailer section

    def on_body(self, body: bytes) -> None:
        self._in_head, self._continue_due = False, False
        if self._rejected:
            return
        self._size += len(body)
        if self._size > self._server.max_body:
            self._fail(413, f"Request body over {self._server.max_body} bytes")
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_head, self._continue_due = False, False
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
            if self._server.eager:  # answered now if no I/O is needed (eager.py says why)
                self._worker = eager.start(self._respond())
            else:
                self._worker = self._running_loop().create_task(self._respond())

    # --- responses -------------------------------------------------------------------------

    async def _respond(self) -> None:
        """Answer queued requests one at a time, in order (RFC 9112 §9.3.2)."""
        try:
            while self._queue and self._transport is not None:
                request, keep_alive = self._queue.popleft()
                try:
                    response = await self._server.dispatch(request)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s %s failed", request.method, request.path)
                    response = _FAILED
                transport = self._transport
                if transport.is_closing():
                    return
                keep_alive = keep_alive and not self._server.closing
                transport.write(response.encode(keep_alive, head=request.method == "HEAD"))
                if response.stream is not None:
                    await response.stream(_ChunkedBody(transport))
                    if transport.is_closing():
                        return
                    transport.write(b"0\r\n\r\n")  # the last chunk (RFC 9112 §7.1)
                if not keep_alive:
                    transport.close()
                    return
                if self._upgrade_rest is None:  # else nothing is read until the hand-over
                    transport.resume_reading()
        finally:
            self._worker = None
            self._server.answering(-1)
        self._answered()

    def _answered(self) -> None:
        """Every queued request is answered: what waited for those answers goes now."""
        if self._refusal is not None:
            self._refuse(self._refusal)
        elif self._upgrade_rest is not None:
            rest, self._upgrade_rest = self._upgrade_rest, None
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
                self._hand_over(rest)
        else:
            if self._continue_due:
                self._continue_due = False
                self._write_continue()
            if self._server.closing:
                self.close_if_idle()
            else:
                self._arm_idle()

    def _write_continue(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _fail(self, status: int, message: str) -> None:
        """Refuse a request that cannot be read, and close: its framing can no longer be
        trusted, so nothing after it on this connection can be either. Parsing stops for good
        (a second error in the same read changes nothing); the refusal is written after the
        answers to the requests before it (:meth:`_refuse`)."""
        if self._rejected:
            return
        self._rejected = True
        self._parser = None
        self._in_head = self._continue_due = False
        refusal = Response(status, message.encode())
        if self._worker is None:
            self._refuse(refusal)
        else:
            self._refusal = refusal

    def _refuse(self, refusal: Response) -> None:
        """Write the refusal and half-close. What the client still sends is dropped unread
        (``data_received`` without a parser) until it closes too or :data:`LINGER_SECONDS`
        pass."""
        self._refusal = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(refusal.encode(keep_alive=False))
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()
            return
        transport.write_eof()
        self._cancel_timer()
        self._idle = self._running_loop().call_later(LINGER_SECONDS, transport.close)

    def _upgrade(self, rest: bytes) -> None:
        """The request asks to upgrade: hand the socket over once the requests before it are
        answered; until then nothing more is read (it belongs to the new protocol)."""
        self._parser = None  # drop the parser (and its reference cycle to us) for good
        if self._worker is None:
            self._hand_over(rest)
            return
        self._upgrade_rest = rest
        if self._transport is not None:
            self._transport.pause_reading()

    def _hand_over(self, rest: bytes) -> None:
        request, transport = self._request, self._transport
        self._server.connections.discard(self)
        self._cancel_timer()
        if transport is None:
            return
        if request is None:  # not expected: llhttp upgrades only after a complete head
            transport.close()
            return
        self._server.upgrade(request, transport, rest)

    # --- timeouts and shutdown -------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _arm_idle(self) -> None:
        """Close after ``idle_timeout`` with nothing to do. Cheap per request: one timer
        stays armed and, when it fires early, re-arms itself for the current deadline,
        instead of a timer made and cancelled for every request of a keep-alive connection."""
        timeout = self._server.idle_timeout
        if timeout <= 0:
            return
        loop = self._running_loop()
        self._idle_deadline = loop.time() + timeout
        if self._idle is None:
            self._idle = loop.call_at(self._idle_deadline, self._idle_due)

    def _disarm_idle(self) -> None:
        """Busy: the armed timer, when it fires, finds no deadline and does nothing."""
        self._idle_deadline = None

    def _idle_due(self) -> None:
        self._idle = None
        deadline = self._idle_deadline
        if deadline is None:
            return
        loop = self._running_loop()
        if loop.time() < deadline:
            self._idle = loop.call_at(deadline, self._idle_due)
        else:
            self.close_if_idle()

    def _cancel_timer(self) -> None:
        """No more idle timeout at all (closed, handed over, or lingering instead)."""
        self._idle_deadline = None
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
