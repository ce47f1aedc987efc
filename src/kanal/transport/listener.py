"""The listening sockets: the WebSocket endpoint and the HTTP API on one port, or on separate
ports when ``[server] api_port`` / ``websocket_port`` say so; and the optional one that
serves only ``/metrics`` (``metrics_port``).

Ownership rule: the listening sockets live here; ``kanal.server`` starts and stops them
through :class:`Listener` without knowing the network code. Each accepted connection starts
as an :class:`~kanal.transport.http11.HttpConnection`; a WebSocket upgrade hands the socket
to :class:`~kanal.transport.websocket.WebSocketEndpoint`, everything else goes to
:class:`~kanal.transport.http.HttpApi`. What one address serves is its :class:`Bind`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from kanal.config import ServerSettings
from kanal.metrics import CONTENT_TYPE
from kanal.transport.http import HttpApi, Scrape
from kanal.transport.http11 import Dispatch, HttpServer, Request, Response, Upgrade
from kanal.transport.websocket import WebSocketConnection, WebSocketEndpoint
from kanal.transport.xhr import XhrEndpoint, XhrSession

__all__ = [
    "HTTP_IDLE_TIMEOUT",
    "LISTEN_BACKLOG",
    "Bind",
    "ListenError",
    "Listener",
    "MetricsListener",
    "binds",
    "probe_bind",
    "tls_context",
]

#: capped by the kernel at net.core.somaxconn
LISTEN_BACKLOG = 65535
#: seconds a keep-alive HTTP connection may stay idle (or take to send one request)
HTTP_IDLE_TIMEOUT = 60.0


class ListenError(Exception):
    """The listener cannot start (unusable TLS files, an address that cannot be bound); the
    message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Bind:
    """One listening address and what it serves besides the health checks (``GET /`` and
    ``GET /ready``, which every address answers: a load balancer probes the port it sends
    traffic to)."""

    host: str
    port: int
    websocket: bool = True  # WebSocket connections, {prefix}/app/{key}
    api: bool = True  # the HTTP API, /metrics and the console: what a backend calls

    @property
    def label(self) -> str:
        """What the start-up log says this address serves, when it is not everything."""
        if self.websocket and self.api:
            return ""
        if self.websocket:
            return " (WebSocket connections)"
        return " (HTTP API)" if self.api else " (health checks only)"


def binds(settings: ServerSettings) -> list[Bind]:
    """``host:port``, then the separate listeners that ``api_port`` / ``websocket_port`` ask
    for. The main address keeps whatever was not moved elsewhere (with both moved, only the
    health checks), so without them it serves everything, as it always has."""
    api, websocket = settings.api_port != 0, settings.websocket_port != 0
    found = [Bind(settings.host, settings.port, websocket=not websocket, api=not api)]
    if api:
        host = settings.api_host or settings.host
        found.append(Bind(host, settings.api_port, websocket=False, api=True))
    if websocket:
        host = settings.websocket_host or settings.host
        found.append(Bind(host, settings.websocket_port, websocket=True, api=False))
    return found


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    # uvloop's bind errors carry errno but a long message of their own: say it the C way.
    return os.strerror(exc.errno) if exc.errno else str(exc)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """A server TLS context from PEM files, or ``None`` without a certificate.

    Raises:
        ListenError: a file is missing or unreadable, or not a PEM certificate or key.
    """
    if not cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file or None)
    except OSError as exc:
        files = ", ".join(f for f in (cert_file, key_file) if f)
        raise ListenError(f"cannot load the TLS certificate/key ({files}): {_why(exc)}") from None
    return context


def _bind_error(host: str, port: int, exc: OSError) -> ListenError:
    return ListenError(f"cannot listen on {host}:{port}: {_why(exc)}")


def probe_bind(host: str, port: int) -> None:
    """Bind and release ``host:port`` with SO_REUSEPORT, as each worker will.

    Raises:
        ListenError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _bind_error(host, port, exc) from None


_NO_WEBSOCKET = Response(404, b"WebSocket connections are not served on this port")
_WEBSOCKET_ONLY = Response(426, b"This endpoint only accepts WebSocket upgrades")


async def _answer(response: Response) -> Response:
    return response


def _refuse_upgrade(request: Request, transport: asyncio.Transport, rest: bytes) -> None:
    """An address without the WebSocket endpoint (the API listener): an upgrade is answered as
    any path it does not serve, 404, and the connection closed (RFC 9110 §7.8 lets a server
    ignore Upgrade; after a refused upgrade a client has nothing more to send)."""
    transport.write(_NO_WEBSOCKET.encode(keep_alive=False))
    transport.close()


async def _listen(
    connections: HttpServer, host: str, port: int, reuse_port: bool, tls: ssl.SSLContext | None
) -> asyncio.Server:
    # A reconnect storm (every pusher-js client after a 4200 close) arrives at once: with
    # a backlog of 128 the kernel drops SYNs and clients retry for seconds.
    try:
        return await asyncio.get_running_loop().create_server(
            connections.protocol,
            host,
            port,
            reuse_port=reuse_port or None,
            ssl=tls,
            backlog=LISTEN_BACKLOG,
        )
    except OSError as exc:
        raise _bind_error(host, port, exc) from None


class Listener:
    """Routes ``{prefix}/app/{key}``, pusher-js's HTTP transports (``{prefix}/pusher/app/{key}/
    ...``, where WebSocket connections are served), the HTTP API and health checks; starts
    and stops every address of the node (:func:`binds`)."""

    def __init__(
        self,
        websocket: WebSocketEndpoint,
        http: HttpApi,
        *,
        max_request_bytes: int,
        shutdown_timeout: float = 10.0,
        eager: bool = False,
        xhr: XhrEndpoint | None = None,
    ) -> None:
        self._websocket = websocket
        self._xhr = xhr
        self._http = http
        self._max_body = max_request_bytes
        self._shutdown_timeout = shutdown_timeout
        self._eager = eager
        self._servers: list[tuple[asyncio.Server, HttpServer]] = []
        self.port = 0  # the main address's, once listening

    # Not coroutines themselves: each returns the HTTP API's own coroutine, one frame less
    # on every request (docs/performance.md, "The per-request path").
    def _dispatch(self, request: Request) -> Awaitable[Response]:
        if self._websocket.app_key(request.path) is not None:
            return _answer(_WEBSOCKET_ONLY)
        if self._xhr is not None and (where := self._xhr.route(request)) is not None:
            return self._xhr.dispatch(request, where)
        return self._http.dispatch(request)

    def _dispatch_websocket_only(self, request: Request) -> Awaitable[Response]:
        if self._websocket.app_key(request.path) is not None:
            return _answer(_WEBSOCKET_ONLY)
        if self._xhr is not None and (where := self._xhr.route(request)) is not None:
            return self._xhr.dispatch(request, where)
        return self._http.dispatch_probes(request)

    def _connections(self, bind: Bind) -> HttpServer:
        """The HTTP side of one address: its routes, and whether it hands over upgrades."""
        dispatch: Dispatch
        if bind.websocket:
            dispatch = self._dispatch if bind.api else self._dispatch_websocket_only
        else:
            dispatch = self._http.dispatch if bind.api else self._http.dispatch_probes
        upgrade: Upgrade = self._websocket.upgrade if bind.websocket else _refuse_upgrade
        return HttpServer(
            dispatch,
            upgrade,
            max_body=self._max_body,
            idle_timeout=HTTP_IDLE_TIMEOUT,
            eager=self._eager,
        )

    async def start(
        self,
        addresses: Sequence[Bind],
        *,
        reuse_port: bool = False,
        tls_cert_file: str = "",
        tls_key_file: str = "",
    ) -> list[int]:
        """Bind and serve every address (TLS on each when a certificate is given); returns the
        bound ports, in the order of ``addresses``. If one address cannot be bound, those
        already bound are released again.

        Raises:
            ListenError: the TLS files are unusable or an address cannot be bound.
        """
        tls = tls_context(tls_cert_file, tls_key_file)
        for bind in addresses:
            connections = self._connections(bind)
            try:
                server = await _listen(connections, bind.host, bind.port, reuse_port, tls)
            except ListenError:
                for started, _ in self._servers:
                    started.close()
                self._servers = []
                raise
            self._servers.append((server, connections))
        ports = [server.sockets[0].getsockname()[1] for server, _ in self._servers]
        self.port = ports[0]
        return ports

    def drain(self) -> None:
        """The node is draining (:mod:`kanal.drain`): every HTTP answer from now on carries
        ``Connection: close``, so a keep-alive client of the API opens its next connection
        through the load balancer, which by then sends it to another node."""
        for _, connections in self._servers:
            connections.closing = True

    def refuse_upgrades(self) -> None:
        """New WebSocket upgrades get 503 from now on, new HTTP sessions close 4200 at once;
        the HTTP API is still served."""
        self._websocket.accepting = False
        if self._xhr is not None:
            self._xhr.accepting = False

    def open_connections(self) -> list[WebSocketConnection | XhrSession]:
        """The WebSocket connections and HTTP sessions not closing yet, for the drain to hand
        over (:meth:`WebSocketConnection.hand_over`, :meth:`XhrSession.hand_over`)."""
        sessions = self._xhr.open_sessions() if self._xhr is not None else []
        return [conn for conn in self._websocket.connections if not conn.closing] + sessions

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests and closing sockets, release the ports."""
        if not self._servers:
            return
        for server, connections in self._servers:
            server.close()
            connections.close_idle()
        if self._xhr is not None:  # its streams and polls end: their requests are answered
            await self._xhr.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._shutdown_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                for _, connections in self._servers:
                    await connections.wait_idle()
        for _, connections in self._servers:
            connections.abort_all()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._websocket.quiet.wait()
        await self._websocket.abort_all()
        self._servers = []


class MetricsListener:
    """``metrics_port``: ``GET /metrics`` and nothing else, so that the ports clients and the
    internet reach need not expose the unauthenticated metrics."""

    def __init__(self, scrape: Scrape, *, max_request_bytes: int) -> None:
        self._scrape = scrape
        self._connections = HttpServer(
            self._dispatch,
            _refuse_upgrade,
            max_body=max_request_bytes,
            idle_timeout=HTTP_IDLE_TIMEOUT,
        )
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _dispatch(self, request: Request) -> Response:
        if request.path != "/metrics":
            return Response(404, b"Not found")
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"Method not allowed")
        return Response(200, await self._scrape(), CONTENT_TYPE)

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls_cert_file: str = "",
        tls_key_file: str = "",
    ) -> int:
        """Bind and serve (TLS like the other ports); returns the bound port.

        Raises:
            ListenError: the TLS files are unusable or the address cannot be bound.
        """
        tls = tls_context(tls_cert_file, tls_key_file)
        self._server = await _listen(self._connections, host, port, reuse_port, tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._connections.close_idle()
        self._connections.abort_all()  # a scrape in flight is retried at the next interval
        self._server = None
