"""kanal inside a Python web app: an ASGI 3 application plus in-process publishing.

``create_app`` builds a node from the same settings as ``kanal serve`` (a
:class:`~kanal.config.Config`, a TOML path, or keyword arguments for one app) and returns a
:class:`KanalApp`: an ASGI application serving ``/app/{key}`` (WebSocket) and the whole HTTP
API, whose ``realtime`` attribute publishes and queries without HTTP. Mount it in Starlette or
FastAPI (``app.mount("/realtime", kanal_app)``; pusher-js then uses ``wsPath: "/realtime"``)
and start it from the host app's lifespan (``FastAPI(lifespan=kanal_app.lifespan)``); it also
starts itself on its first request where no lifespan reaches it (Django routing to it). Its
``hooks`` attribute runs Python callables for the webhook events, with the webhooks' grace
period and, in a cluster, once for the whole cluster.

Like :mod:`kanal.server`, this module is a composition root: it only wires parts together.
How-to: docs/embedding.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from kanal import logs
from kanal.config import Config
from kanal.realtime import Realtime
from kanal.server import Server, StartupError, build
from kanal.settings import resolve_config
from kanal.transport.asgi import AsgiTransport, Receive, Scope, Send
from kanal.transport.frames import text_frame
from kanal.transport.listener import ListenError, binds
from kanal.webhooks import Hooks
from kanal.workers import several_workers

__all__ = ["KanalApp", "create_app"]

log = logging.getLogger("kanal")


def _json_as_is(payload: bytes) -> bytes:
    """The ASGI server frames each message itself: hand over the JSON, encoded once."""
    return payload


def _warn_if_several_workers(config: Config) -> None:
    """With the memory adapter each process is a kanal of its own: say so loudly when this
    one looks like one of several workers (docs/embedding.md, "Several processes")."""
    if config.scaling.adapter == "redis":
        return
    evidence = several_workers(sys.argv, os.environ)
    if evidence is not None:
        log.warning(
            "kanal uses the memory adapter in one of several worker processes (%s): every "
            "worker is a separate kanal, so an event triggered in one never reaches the "
            "clients of another, and presence, channel counts and webhooks are per worker. "
            "Set [scaling] adapter = 'redis' (redis_url) to make the workers one cluster, "
            "or run a single worker.",
            evidence,
        )


class KanalApp:
    """A kanal node as an ASGI application; ``realtime`` is its in-process API.

    With ``own_port`` the node also serves kanal's own transport (the one ``kanal serve``
    uses, faster per connection) on ``[server] host`` / ``port`` of its config, started and
    stopped with the app; the ASGI routes keep working beside it.
    """

    def __init__(self, server: Server, *, own_port: bool = False) -> None:
        self.server = server
        self.own_port = own_port
        self.port: int | None = None  # the own transport's port once it listens
        self.config = server.config
        if server.hooks is None:
            raise ValueError("build the node with build(config, hooks=True)")
        #: In-process hooks for the webhook events (docs/embedding.md, "In-process hooks").
        self.hooks: Hooks = server.hooks
        settings = server.config.server
        default = None if server.config.apps_store.url else server.config.apps[0]
        self.realtime = Realtime(server.service, server.apps, default)
        self._transport = AsgiTransport(
            hub=server.hub,
            http=server.http,
            websocket=server.websocket,
            start=self._start,
            stop=self._stop,
            max_request_bytes=settings.max_request_bytes,
            max_frame_bytes=settings.max_frame_bytes,
            max_output_buffer_bytes=settings.max_output_buffer_bytes,
            shutdown_timeout=settings.shutdown_timeout,
            framed=own_port,
            trace=settings.verbose,
            xhr=server.xhr,
        )
        if settings.verbose:  # the host app's handlers then show the traces (docs/embedding.md)
            logs.FRAMES.setLevel(logging.DEBUG)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._transport(scope, receive, send)

    async def _start(self) -> None:
        self.realtime.loop = asyncio.get_running_loop()
        _warn_if_several_workers(self.config)
        await self.server.start()
        if self.own_port:
            settings = self.config.server
            try:
                ports = await self.server.listener.start(
                    binds(settings),
                    tls_cert_file=settings.tls_cert_file,
                    tls_key_file=settings.tls_key_file,
                )
            except ListenError as exc:
                await self.server.stop()
                raise StartupError(str(exc)) from None
            self.port = ports[0]
            log.info("kanal's own transport listening on %s:%s", settings.host, self.port)

    async def _stop(self, drain: Callable[[], Awaitable[None]]) -> None:
        async def both() -> None:
            await drain()
            if self.own_port:
                await self.server.listener.stop()

        await self.server.stop(drain=both)
        self.realtime.loop = None
        self.port = None

    async def startup(self) -> None:
        """Start the node (what the ASGI lifespan startup does)."""
        await self._transport.startup()

    async def shutdown(self) -> None:
        """Close every connection and stop the node (what lifespan shutdown does)."""
        await self._transport.shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For the host app's lifespan: ``FastAPI(lifespan=kanal_app.lifespan)``, or inside
        its own lifespan with ``async with kanal_app.lifespan(): ...``. Starlette does not
        pass lifespan events to mounted apps, so a mounted kanal needs this."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()


def create_app(
    config: Config | str | Path | None = None, *, own_port: bool = False, **app_settings: Any
) -> KanalApp:
    """Build an embedded node.

    Args:
        config: a :class:`Config`, or the path of a TOML file as ``kanal serve --config``
            reads it (``KANAL_*`` environment variables apply on top). Without it and without
            keyword arguments, ``$KANAL_CONFIG`` or the environment alone, as ``kanal serve``.
        own_port: also serve kanal's own transport on the config's ``[server]`` host and
            port (see :class:`KanalApp`).
        app_settings: instead of ``config``, one app's settings (``id``, ``key``, ``secret``,
            and any ``[[apps]]`` setting such as ``enable_client_messages``), plus
            ``redis_url`` (and ``redis_prefix``, ``redis_fanout``) to join a cluster with the
            Redis adapter.
    """
    frame = text_frame if own_port else _json_as_is
    built = build(resolve_config(config, app_settings, os.environ), frame=frame, hooks=True)
    return KanalApp(built, own_port=own_port)
