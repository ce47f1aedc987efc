"""Shared fixtures: apps with known credentials and a real kanal server on a free port.

``kanal_server`` builds the node exactly as ``kanal serve`` does (:func:`kanal.server.build`)
and serves it on 127.0.0.1 port 0 inside the test's event loop; the fixture stops it and
waits for its shutdown, so nothing outlives the test.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop

from kanal.config import (
    App,
    AppsStoreSettings,
    Config,
    ScalingSettings,
    ServerSettings,
    WebhookSettings,
)
from kanal.server import Server, build, serve
from tests.asgi_server import AsgiNode

APP_ID = "1"
APP_KEY = "app-key"
APP_SECRET = "app-secret"
#: Test nodes stop at once (no drain_grace, every connection in one batch) unless a test asks
#: for a drain: tests/test_drain.py does.
NO_DRAIN: dict[str, Any] = {"drain_grace": 0.0, "drain_seconds": 0.0}
#: An HTTP session (pusher-js's xhr transports) whose client went away is forgotten after 2 s
#: instead of 10, so that tests see its member_removed within their 5 s waits; a poll comes
#: back well within 2 s even on a loaded host.
QUICK_HTTP_SESSIONS: dict[str, Any] = {"http_session_timeout": 2.0}


def make_app(**overrides: Any) -> App:
    """The test app: numeric id (the Python SDK needs one), client events on."""
    fields: dict[str, Any] = {
        "id": APP_ID,
        "key": APP_KEY,
        "secret": APP_SECRET,
        "enable_client_messages": True,
    }
    fields.update(overrides)
    return App(**fields)


@dataclass
class RunningServer:
    server: Server
    port: int

    @property
    def hub(self) -> Any:
        return self.server.hub

    def ws_url(self, key: str = APP_KEY, query: str = "protocol=7&client=js&version=8.4.0") -> str:
        return f"http://127.0.0.1:{self.port}/app/{key}?{query}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


StartServer = Callable[..., Any]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Tests run on uvloop, as ``kanal serve`` does: its transports differ from asyncio's."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def transport() -> str:
    """Which transport ``start_server`` serves with: ``"serve"`` (kanal's own, as ``kanal
    serve``) or ``"asgi"`` (kanal.asgi under uvicorn). tests/e2e parametrises it over both."""
    return "serve"


@pytest.fixture
async def start_server(transport: str) -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(apps=[...], **server_settings)`` -> RunningServer; with
    ``apps_store`` the apps come from that store instead (tests/app_stores)."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    embedded: list[AsgiNode] = []

    async def start(
        apps: list[App] | None = None,
        webhooks: WebhookSettings | None = None,
        scaling: ScalingSettings | None = None,
        apps_store: AppsStoreSettings | None = None,
        **server_settings: Any,
    ) -> RunningServer:
        settings = dataclasses.replace(
            ServerSettings(port=0, **NO_DRAIN, **QUICK_HTTP_SESSIONS), **server_settings
        )
        config = Config(
            server=settings,
            apps=tuple(apps or [make_app()]),
            webhooks=webhooks or WebhookSettings(),
            scaling=scaling or ScalingSettings(),
            apps_store=apps_store or AppsStoreSettings(),
        )
        if transport == "asgi":
            node = AsgiNode(config)
            embedded.append(node)
            return RunningServer(node.app.server, await node.start())
        server = build(config)
        stop = asyncio.Event()
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve(server, stop, port.set_result))
        running.append((stop, task))
        waiters: set[asyncio.Future[Any]] = {port, task}
        done, _ = await asyncio.wait(waiters, timeout=10, return_when="FIRST_COMPLETED")
        if port not in done:
            if task.done():
                task.result()  # re-raise why serve() failed
            raise RuntimeError("kanal did not start within 10 s")
        return RunningServer(server, port.result())

    yield start
    for stop, _task in running:
        stop.set()
    for _stop, task in running:
        await asyncio.wait_for(task, timeout=15)
    for node in embedded:
        await node.stop()


@pytest.fixture
async def kanal_server(start_server: StartServer) -> RunningServer:
    """A default node: one app (id 1, key app-key, secret app-secret, client events on)."""
    result: RunningServer = await start_server()
    return result


# Redis fixtures (redis_url and the deployments behind it, redis_process, prefix, raw,
# redis_fanout) for every test package.
from tests.redis_server import (  # noqa: E402
    prefix,
    raw,
    redis_cluster_url,
    redis_fanout,
    redis_process,
    redis_url,
    single_redis_url,
)

__all__ = [
    "prefix",
    "raw",
    "redis_cluster_url",
    "redis_fanout",
    "redis_process",
    "redis_url",
    "single_redis_url",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Interest-based fan-out (redis_fanout = "channel") is refused with a Redis Cluster URL
    (docs/scaling.md): that combination of the two parameters is not collected."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        pair = (params.get("redis_url"), params.get("redis_fanout"))
        (drop if pair == ("cluster", "channel") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
