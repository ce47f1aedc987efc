"""One scrape for a whole worker group (``kanal serve --workers N``; docs/metrics.md).

Ownership rule: the Unix sockets the workers answer each other on live here. The parent
process makes a private directory (mode 0700) before it forks and removes it when it exits;
worker ``i`` listens on ``worker-i.sock`` in it and answers every connection with its own
exposition, then closes. The worker a scrape reaches (SO_REUSEPORT picks one at random)
asks every other worker at once and answers with the sum (:mod:`kanal.metrics.group`).

Why the workers ask each other rather than the parent answering: the parent only forks,
forwards signals and restarts (:mod:`kanal.workers`) and runs no event loop, and a scrape of
the main port reaches a worker anyway. A worker that does not answer within
``PEER_TIMEOUT`` (restarting, or stuck) is left out of that scrape and counted in
``kanal_scrape_workers{state="missing"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from kanal.metrics import merge_expositions

__all__ = ["PEER_TIMEOUT", "WorkerGroup", "WorkerMetrics"]

log = logging.getLogger("kanal.metrics")

#: Seconds a scrape waits for the other workers (Prometheus's default timeout is 10 s).
PEER_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class WorkerGroup:
    """This worker's place in its group: the parent's directory, its index, the group size."""

    directory: str
    index: int
    size: int

    def socket_path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")


class WorkerMetrics:
    """Answers the other workers with ``render()``; :meth:`scrape` sums the whole group."""

    def __init__(
        self, group: WorkerGroup, render: Callable[[], bytes], timeout: float = PEER_TIMEOUT
    ) -> None:
        self.group = group
        self._render = render
        self._timeout = timeout
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self.group.socket_path(self.group.index)
        # A worker restarted after a crash finds its predecessor's socket file still there.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._answer, path)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            os.unlink(self.group.socket_path(self.group.index))

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self._render())
            await writer.drain()
        except OSError:  # the asking worker gave up (timeout) and closed
            pass
        finally:
            writer.close()

    async def scrape(self) -> bytes:
        """This worker's metrics plus every other worker's that answer in time, summed."""
        own = self._render().decode()
        others = [i for i in range(self.group.size) if i != self.group.index]
        answers = await asyncio.gather(*(self._ask(index) for index in others))
        texts = [own, *(text for text in answers if text is not None)]
        return merge_expositions(texts, missing=answers.count(None))

    async def _ask(self, index: int) -> str | None:
        path = self.group.socket_path(index)
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_unix_connection(path)
                try:
                    data = await reader.read()  # the whole exposition, up to the close
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            log.warning(
                "metrics: worker %d did not answer (%s); left out of this scrape", index, exc
            )
            return None
        return data.decode()
