"""One listening socket serving the WebSocket endpoint and the HTTP API.

Ownership rule: the listening socket lives here; ``kanal.server`` starts and stops it
through :class:`Listener` without knowing the network code. Each accepted connection starts
as an :class:`~kanal.transport.http11.HttpConnection`; a WebSocket upgrade hands the socket
to :class:`~kanal.transport.websocket.WebSocketEndpoint`, everything else goes to
:class:`~kanal.transport.http.HttpApi`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl

from kanal.transport.http import HttpApi
from kanal.transport.http11 import HttpServer, Request, Response
from kanal.transport.websocket import WebSocketEndpoint

__all__ = [
    "HTTP_IDLE_TIMEOUT",
    "LISTEN_BACKLOG",
    "ListenError",
    "Listener",
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


class Listener:
    """Routes ``{prefix}/app/{key}``, the HTTP API and health checks; start/stop the port."""

    def __init__(
        self,
        websocket: WebSocketEndpoint,
        http: HttpApi,
        *,
        max_request_bytes: int,
        shutdown_timeout: float = 10.0,
        eager: bool = False,
    ) -> None:
        self._websocket = websocket
        self._http = http
        self._shutdown_timeout = shutdown_timeout
        self._connections = HttpServer(
            self._dispatch,
            websocket.upgrade,
            max_body=max_request_bytes,
            idle_timeout=HTTP_IDLE_TIMEOUT,
            eager=eager,
        )
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _dispatch(self, request: Request) -> Response:
        if self._websocket.app_key(request.path) is not None:
            return Response(426, b"This endpoint only accepts WebSocket upgrades")
        return await self._http.dispatch(request)

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls_cert_file: str = "",
        tls_key_file: str = "",
    ) -> int:
        """Bind and serve (TLS when a certificate is given); returns the bound port.

        Raises:
            ListenError: the TLS files are unusable or the address cannot be bound.
        """
        tls = tls_context(tls_cert_file, tls_key_file)
        # A reconnect storm (every pusher-js client after a 4200 close) arrives at once: with
        # a backlog of 128 the kernel drops SYNs and clients retry for seconds.
        try:
            self._server = await asyncio.get_running_loop().create_server(
                self._connections.protocol,
                host,
                port,
                reuse_port=reuse_port or None,
                ssl=tls,
                backlog=LISTEN_BACKLOG,
            )
        except OSError as exc:
            raise _bind_error(host, port, exc) from None
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests and closing sockets, release the port."""
        if self._server is None:
            return
        self._server.close()
        self._connections.close_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._shutdown_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._connections.idle.wait()
        self._connections.abort_all()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._websocket.quiet.wait()
        await self._websocket.abort_all()
        self._server = None
