"""ASGI apps served by uvicorn inside the test's event loop.

``AsgiNode`` is kanal's ASGI app (kanal.asgi) alone, used by ``start_server`` when the
``transport`` fixture is ``"asgi"``: the end-to-end tests run once against ``kanal serve``'s
own transport and once against the embedded app, so every behaviour they prove holds for
both. ``Served`` is any ASGI app (a FastAPI app with kanal mounted, a Django router).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

import uvicorn

from kanal.asgi import KanalApp, create_app
from kanal.config import Config

__all__ = ["AsgiNode", "Served"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0


class _Server(uvicorn.Server):
    """uvicorn's server, with an event once it listens (uvicorn itself only sets a flag)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.listening.set()

    def install_signal_handlers(self) -> None:
        """The test process keeps its own signal handling."""


class Served:
    """``app`` under uvicorn on 127.0.0.1, a free port; ``lifespan="off"`` as a server that
    sends no lifespan events would run it."""

    def __init__(
        self, app: Any, root_path: str = "", lifespan: Literal["on", "off"] = "on"
    ) -> None:
        self._uvicorn = _Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=0,
                lifespan=lifespan,
                log_level="warning",
                root_path=root_path,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        self._task = asyncio.ensure_future(self._uvicorn.serve())
        listening = asyncio.ensure_future(self._uvicorn.listening.wait())
        done, _ = await asyncio.wait(
            {listening, self._task}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED"
        )
        if listening not in done:
            listening.cancel()
            if self._task.done():
                self._task.result()
            raise RuntimeError("uvicorn did not start within 10 s")
        self.port = self._uvicorn.servers[0].sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._task is None:
            return
        self._uvicorn.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, STOP_TIMEOUT)


class AsgiNode(Served):
    """One embedded node under uvicorn on 127.0.0.1, a free port."""

    def __init__(
        self,
        config: Config,
        root_path: str = "",
        *,
        own_port: bool = False,
        lifespan: Literal["on", "off"] = "on",
    ) -> None:
        self.app: KanalApp = create_app(config, own_port=own_port)
        super().__init__(self.app, root_path, lifespan)
