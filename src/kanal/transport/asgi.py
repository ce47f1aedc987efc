"""kanal as an ASGI 3 application: the WebSocket endpoint and the HTTP API inside a web app.

Ownership rule: this module turns ASGI events into the same calls kanal's own transport makes
(:meth:`Hub.open` / ``receive`` / ``closed``, :meth:`HttpApi.dispatch`) and holds no Pusher
rules. The ASGI server (uvicorn, hypercorn, granian) does the HTTP parsing and the RFC 6455
framing, so the node is built with a ``frame`` that hands each broadcast's JSON over as is:
it is still encoded once per event, and each connection sends that one ``bytes`` object.

Mounted under a prefix (Starlette ``Mount``, FastAPI ``app.mount``), the prefix arrives as
``root_path`` and is removed before routing, so the routes and the signed HTTP API paths are
the same as for ``kanal serve``. ASGI offers no WebSocket Ping frames: liveness comes from
the Pusher-level ``pusher:ping`` / ``pusher:pong`` (protocol.md §5.2), which the hub sends
anyway, and from the ASGI server's own pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from kanal import logs
from kanal.config import App
from kanal.hub import Hub
from kanal.protocol.errors import CloseCode, ConnectionRefused
from kanal.transport.frames import text_payload
from kanal.transport.http import HttpApi
from kanal.transport.http11 import Request, Response
from kanal.transport.http_messages import Stream
from kanal.transport.websocket import WebSocketEndpoint, new_socket_id
from kanal.transport.xhr import XhrEndpoint

__all__ = ["AsgiConnection", "AsgiTransport", "Scope"]

log = logging.getLogger("kanal.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AsgiConnection:
    """One WebSocket served by the ASGI server: the hub's ``Connection``.

    ``send`` never blocks: messages wait in a queue that one writer task empties. A queue over
    ``limit`` bytes is a slow consumer and is closed with 4100, as with kanal's own transport.
    """

    __slots__ = (
        "_close",
        "_closing",
        "_limit",
        "_outbox",
        "_queued",
        "_text_of",
        "_trace",
        "_wake",
        "socket_id",
    )

    def __init__(
        self, socket_id: str, limit: int, text_of: Callable[[bytes], str], trace: bool = False
    ) -> None:
        self.socket_id = socket_id
        self._limit = limit
        self._text_of = text_of
        self._trace = trace  # [server] verbose: log every frame (kanal.logs.trace)
        self._outbox: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._close: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        if self._closing:
            return
        if self._queued + len(frame) > self._limit:
            log.warning("closing slow consumer %s", self.socket_id)
            self.close(CloseCode.OVER_CAPACITY, "Slow consumer: output buffer limit exceeded")
            return
        if self._trace:
            logs.trace("out", self.socket_id, self._text_of(frame))
        self._outbox.append(frame)
        self._queued += len(frame)
        self._wake.set()

    def probe(self) -> None:
        """ASGI has no Ping frames; the hub's ``pusher:ping`` checks liveness instead."""

    @property
    def close_code(self) -> int | None:
        """The code of our Close, if we closed first."""
        return None if self._close is None else self._close[0]

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        if self._trace:
            logs.trace("out", self.socket_id, f"[close {code} {reason}]")
        self._closing = True
        self._close = (code, reason)
        self._wake.set()

    def stop(self) -> None:
        """The client is gone: nothing more is queued or sent."""
        self._closing = True
        self._outbox.clear()
        self._wake.set()

    async def write(self, send: Send) -> None:
        """Send queued messages in order, then our Close once asked to; ends after it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                frame = self._outbox.popleft()
                self._queued -= len(frame)
                await send({"type": "websocket.send", "text": self._text_of(frame)})
            if self._close is not None:
                code, reason = self._close
                await send({"type": "websocket.close", "code": code, "reason": reason})
                return
            if self._closing:
                return


class AsgiTransport:
    """The ASGI callable: ``lifespan``, ``http`` (the HTTP API) and ``websocket`` scopes.

    Args:
        hub, http, websocket: the node's parts (the endpoint is used for its admission rules).
        start, stop: the node's lifecycle; called from the lifespan protocol, or on the first
            request when the ASGI server sends no lifespan events (Django routing to kanal).
        max_request_bytes, max_frame_bytes, max_output_buffer_bytes: the limits ``kanal
            serve`` applies (docs/configuration.md).
        shutdown_timeout: how long shutdown waits for connections to end after closing them.
        framed: the hub hands out complete RFC 6455 frames (the node also serves kanal's own
            transport on a port of its own); their header is taken off for the ASGI server.
        trace: log every frame in and out (``[server] verbose``).
        xhr: pusher-js's HTTP transports (``[server] http_transports``), served over ASGI
            HTTP: a stream's body goes out piece by piece (``more_body``).
    """

    def __init__(
        self,
        *,
        hub: Hub,
        http: HttpApi,
        websocket: WebSocketEndpoint,
        start: Callable[[], Awaitable[None]],
        stop: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]],
        max_request_bytes: int,
        max_frame_bytes: int,
        max_output_buffer_bytes: int,
        shutdown_timeout: float,
        framed: bool = False,
        trace: bool = False,
        xhr: XhrEndpoint | None = None,
    ) -> None:
        self._hub = hub
        self._xhr = xhr
        self._trace = trace
        self._text_of: Callable[[bytes], str] = _unframed if framed else bytes.decode
        self._http = http
        self._websocket = websocket
        self._start = start
        self._stop = stop
        self._max_body = max_request_bytes
        self._max_message = max_frame_bytes
        self._output_limit = max_output_buffer_bytes
        self._shutdown_timeout = shutdown_timeout
        self._started = False
        self._starting = asyncio.Lock()
        self._sockets: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.startup()
        if kind == "http":
            await self._serve_http(scope, receive, send)
        elif kind == "websocket":
            task = asyncio.current_task()
            assert task is not None
            self._sockets.add(task)
            try:
                await self._serve_websocket(scope, receive, send)
            finally:
                self._sockets.discard(task)

    # --- lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the node once (lifespan startup, or the first request without lifespan)."""
        if self._started:
            return
        async with self._starting:
            if not self._started:
                await self._start()
                self._started = True

    async def shutdown(self) -> None:
        """Close every connection (4200), wait for them to end, stop the node."""
        if self._started:
            self._started = False
            await self._stop(self._drain)

    async def _drain(self) -> None:
        if self._xhr is not None:  # streams and polls end, so their requests do
            await self._xhr.stop()
        if self._sockets:
            await asyncio.wait(list(self._sockets), timeout=self._shutdown_timeout)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("kanal could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- HTTP -------------------------------------------------------------------------------

    async def _serve_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._read_body(receive)
        if body is None:
            response = Response(413, f"Request body over {self._max_body} bytes".encode())
        else:
            response = await self._answer(_request(scope, body))
        headers = [
            (b"content-type", response.content_type.encode()),
            *((name.lower().encode(), value.encode("latin-1")) for name, value in response.headers),
        ]
        if response.stream is None:
            headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if response.stream is not None:
            await _stream(response.stream, receive, send)
            return
        head = scope["method"] == "HEAD"
        await send({"type": "http.response.body", "body": b"" if head else response.body})

    async def _answer(self, request: Request) -> Response:
        xhr = self._xhr
        if xhr is not None and (where := xhr.route(request)) is not None:
            return await xhr.dispatch(request, where)
        return await self._http.dispatch(request)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes ``max_request_bytes`` (answered 413)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # --- WebSocket --------------------------------------------------------------------------

    async def _serve_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        # Accepted first, refused after: the client must see pusher:error and the close code
        # (protocol.md §1.2), which a refused upgrade (HTTP 403) cannot carry.
        await send({"type": "websocket.accept"})
        conn = AsgiConnection(new_socket_id(), self._output_limit, self._text_of, self._trace)
        writer = asyncio.ensure_future(conn.write(send))
        request = _request(scope, b"")
        admission = self._websocket.admission
        client = admission.client(request)
        app = admission.check(request, client)
        admitted, code = False, 1006
        try:
            if isinstance(app, ConnectionRefused):
                self._hub.refuse(conn, app.close_code, app.message)
            else:
                origin = request.headers.get("origin")
                admitted = await self._admit(conn, app, origin, client)
            if admitted:
                code = await self._read_messages(conn, receive)
            else:
                await writer  # the pusher:error and the close go out before we return
        finally:
            conn.stop()
            with contextlib.suppress(Exception):  # the client may be gone: send fails
                await writer
            if admitted:
                await self._hub.closed(conn.socket_id, conn.close_code or code)

    async def _admit(self, conn: AsgiConnection, app: App, origin: str | None, client: str) -> bool:
        try:
            return await self._hub.open(conn, app, origin, client)
        except Exception:  # e.g. the cluster store failed: this client reconnects, others live
            log.exception("could not admit %s", conn.socket_id)
            conn.close(CloseCode.RECONNECT, "Internal server error, reconnect")
            return False

    async def _read_messages(self, conn: AsgiConnection, receive: Receive) -> int:
        """Hand text messages to the hub in order until the client disconnects; its close
        code (ASGI's default 1005 when the client gave none)."""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                code = int(message.get("code", 1005))
                if self._trace:
                    logs.trace("in", conn.socket_id, f"[close {code}]")
                return code
            text = message.get("text")
            if text is None:  # binary messages are ignored (protocol.md §2)
                continue
            if self._trace:
                logs.trace("in", conn.socket_id, text)
            # limits.md §2, RFC 6455 §7.4.1; a str of n characters holds at most 4n bytes, so
            # only long messages are encoded to be measured.
            if len(text) * 4 > self._max_message and len(text.encode()) > self._max_message:
                conn.close(1009, "Message too big")
                continue
            try:
                await self._hub.receive(conn.socket_id, text)
            except Exception:  # a bug must cost this connection only, never the app
                log.exception("closing %s after an internal error", conn.socket_id)
                conn.close(1011, "Internal server error")


class _Body:
    """A streamed response's pieces, waiting for the ASGI server to take them."""

    __slots__ = ("_pieces", "_size", "wake")

    def __init__(self) -> None:
        self._pieces: deque[bytes] = deque()
        self._size = 0
        self.wake = asyncio.Event()

    def write(self, data: bytes) -> None:
        self._pieces.append(data)
        self._size += len(data)
        self.wake.set()

    def buffered(self) -> int:
        return self._size

    async def flush(self, send: Send) -> None:
        self.wake.clear()
        while self._pieces:
            piece = self._pieces.popleft()
            self._size -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": True})


async def _stream(stream: Stream, receive: Receive, send: Send) -> None:
    """Send what ``stream`` writes as it comes, until it returns or the client goes away
    (``http.disconnect``: then ``stream`` is cancelled, as kanal's own transport does)."""
    body = _Body()
    producer = asyncio.ensure_future(stream(body))
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        while not producer.done():
            woken = asyncio.ensure_future(body.wake.wait())
            await asyncio.wait((producer, gone, woken), return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if gone.done():
                return
            await body.flush(send)
        await producer  # its error, if it failed, is the ASGI server's to log
        await body.flush(send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        producer.cancel()
        gone.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _unframed(frame: bytes) -> str:
    return text_payload(frame).decode()


def _request(scope: Scope, body: bytes) -> Request:
    """The transport-neutral request, its path relative to the mount point (``root_path``)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope["path"])
    root = scope.get("root_path", "")
    if root and path.startswith(quote(root)):
        path = path[len(quote(root)) :] or "/"
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(
        method=scope.get("method", "GET"),
        path=path.split("?", 1)[0],
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
        secure=scope.get("scheme") in ("https", "wss"),
        client=_client(scope),
    )


def _client(scope: Scope) -> str:
    """The peer's address from the ASGI scope (``client`` is optional, e.g. a Unix socket)."""
    client = scope.get("client")
    return str(client[0]) if client else ""
