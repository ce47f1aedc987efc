"""SocketIndex: the hub's lookup tables from (app, name) to local connections.

Ownership rule: only :class:`kanal.hub.Hub` creates and changes these indexes (channel ->
subscribers, user -> signed-in connections, watched user -> watchers); they are the hub's
state, kept here so that adding, removing and emptying follow one rule: a key disappears
with its last socket, so the tables never grow with history.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["SocketIndex"]

V = TypeVar("V")


class SocketIndex(Generic[V]):
    """``(app_id, name) -> {socket_id: value}`` with insertion order kept."""

    __slots__ = ("_empty", "_entries")

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], dict[str, V]] = {}
        self._empty: dict[str, V] = {}  # shared answer for misses; never mutated

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, app_id: str, name: str, socket_id: str, value: V) -> None:
        self._entries.setdefault((app_id, name), {})[socket_id] = value

    def remove(self, app_id: str, name: str, socket_id: str) -> None:
        sockets = self._entries.get((app_id, name))
        if sockets is not None:
            sockets.pop(socket_id, None)
            if not sockets:
                del self._entries[(app_id, name)]

    def get(self, app_id: str, name: str) -> dict[str, V]:
        """The live mapping (do not mutate); empty when nobody is there."""
        return self._entries.get((app_id, name), self._empty)
