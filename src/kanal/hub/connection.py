"""What the hub knows of one local connection.

Ownership rule: :class:`Connection` is the whole contract between a transport and the hub (a
transport implements it; the hub calls nothing else on a socket). :class:`Local` is the hub's
record of one connection: its session, the channels it is subscribed to with its presence
member in each, and its signed-in user. Only :class:`kanal.hub.Hub` and its helpers in this
package (:mod:`kanal.hub.users`) create or change a :class:`Local`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kanal.protocol.presence import Member
from kanal.protocol.session import Session, SignedInUser

__all__ = ["Connection", "Local"]


class Connection(Protocol):
    """What a transport gives the hub for one WebSocket connection."""

    socket_id: str

    def send(self, frame: bytes) -> None:
        """Queue an already framed message; never blocks, never raises."""

    def probe(self) -> None:
        """Send a WebSocket Ping control frame (protocol.md §5.2)."""

    def close(self, code: int, reason: str) -> None:
        """Start closing; the transport calls :meth:`Hub.closed` once it is done."""


@dataclass(slots=True, eq=False)
class Local:
    conn: Connection
    session: Session
    channels: dict[str, Member | None] = field(default_factory=dict)
    user: SignedInUser | None = None
