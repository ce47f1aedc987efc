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
import socket
import ssl

from kanal.transport.http import HttpApi
from kanal.transport.http11 import HttpServer, Request, Response
from kanal.transport.websocket import WebSocketEndpoint

__all__ = ["HTTP_IDLE_TIMEOUT", "LISTEN_BACKLOG", "Listener"]

#: capped by the kernel at net.core.somaxconn
LISTEN_BACKLOG = 65535
#: seconds a keep-alive HTTP connection may stay idle (or take to send one request)
HTTP_IDLE_TIMEOUT = 60.0


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext | None:
    """A server TLS context from PEM files, or ``None`` without a certificate.

    Raises:
        OSError: a file is missing or unreadable, or (``ssl.SSLError``) not a valid PEM
            certificate or key.
    """
    if not cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file or None)
    return context


def probe_bind(host: str, port: int) -> None:
    """Bind and release ``host:port`` with SO_REUSEPORT, as each worker will.

    Raises:
        OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host, port))


class Listener:
    """Routes ``{prefix}/app/{key}``, the HTTP API and health checks; start/stop the port."""

    def __init__(
        self,
        websocket: WebSocketEndpoint,
        http: HttpApi,
        *,
        max_request_bytes: int,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self._websocket = websocket
        self._http = http
        self._shutdown_timeout = shutdown_timeout
        self._connections = HttpServer(
            self._dispatch,
            websocket.upgrade,
            max_body=max_request_bytes,
            idle_timeout=HTTP_IDLE_TIMEOUT,
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
        tls: ssl.SSLContext | None = None,
    ) -> int:
        """Bind and serve (TLS when a context is given); returns the bound port.

        Raises:
            OSError: the address cannot be bound (in use, not local, no permission).
        """
        # A reconnect storm (every pusher-js client after a 4200 close) arrives at once: with
        # a backlog of 128 the kernel drops SYNs and clients retry for seconds.
        self._server = await asyncio.get_running_loop().create_server(
            self._connections.protocol,
            host,
            port,
            reuse_port=reuse_port or None,
            ssl=tls,
            backlog=LISTEN_BACKLOG,
        )
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
