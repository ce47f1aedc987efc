"""Write coalescing: every frame a connection is handed during one event-loop iteration goes
out in one ``writelines`` when the iteration ends (docs/design.md, "Fan-out").

Ownership rule: holds frames only between their hand-over and the end of the iteration;
:class:`~kanal.transport.websocket.WebSocketConnection` writes them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kanal.transport.websocket import WebSocketConnection

__all__ = ["Coalescer"]


class Coalescer:
    """Collects frames per connection and flushes them once per event-loop iteration."""

    def __init__(self) -> None:
        self._pending: dict[WebSocketConnection, list[bytes]] = {}
        self._scheduled = False

    def queue(self, conn: WebSocketConnection, frame: bytes) -> None:
        frames_ = self._pending.get(conn)
        if frames_ is None:
            self._pending[conn] = [frame]
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        else:
            frames_.append(frame)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for conn, queued in pending.items():
            conn.write(queued)

    def flush_one(self, conn: WebSocketConnection) -> None:
        queued = self._pending.pop(conn, None)
        if queued:
            conn.write(queued)
