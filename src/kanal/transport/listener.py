"""One aiohttp application serving the WebSocket endpoint and the HTTP API on one port.

Ownership rule: the listening socket and the aiohttp runner live here; ``kanal.server``
starts and stops them through :class:`Listener` without knowing the network library.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from kanal.transport.http import HttpApi
from kanal.transport.websocket import WebSocketEndpoint

__all__ = ["LISTEN_BACKLOG", "Listener"]

#: capped by the kernel at net.core.somaxconn
LISTEN_BACKLOG = 65535


def _unknown_path(
    websocket: WebSocketEndpoint,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        # PROTOCOL.md §1.2 step 1: an upgrade on an unknown path is accepted, then closed 4005.
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await websocket.handle_unknown_path(request)
        raise web.HTTPNotFound(text="Not found")

    return handler


class Listener:
    """Routes ``{prefix}/app/{key}``, the HTTP API and health checks; start/stop the port."""

    def __init__(
        self,
        websocket: WebSocketEndpoint,
        http: HttpApi,
        *,
        path_prefix: str,
        max_request_bytes: int,
        shutdown_timeout: float = 10.0,
    ) -> None:
        app = web.Application(client_max_size=max_request_bytes)
        prefix = path_prefix.rstrip("/")
        app.router.add_get(prefix + "/app/{key}", websocket.handle)
        app.add_routes(http.routes())
        app.router.add_route("*", "/{tail:.*}", _unknown_path(websocket))
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
        )
        self.port = 0

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls_cert_file: str = "",
        tls_key_file: str = "",
    ) -> int:
        """Bind and serve (TLS when a certificate is given); returns the bound port."""
        context: ssl.SSLContext | None = None
        if tls_cert_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls_cert_file, tls_key_file)
        await self._runner.setup()
        # A reconnect storm (every pusher-js client after a 4200 close) arrives at once: with
        # aiohttp's default backlog of 128 the kernel drops SYNs and clients retry for seconds.
        site = web.TCPSite(
            self._runner,
            host,
            port,
            reuse_port=reuse_port or None,
            ssl_context=context,
            backlog=LISTEN_BACKLOG,
        )
        await site.start()
        self.port = self._runner.addresses[0][1] if self._runner.addresses else port
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight handlers finish their cleanup, release the port."""
        await self._runner.shutdown()
        await self._runner.cleanup()
