"""What the hub tells the live console (:mod:`kanal.console`) about one connection.

Ownership rule: these functions only turn the hub's values into console records; the hub
calls them behind ``if console.watching:``, so they cost nothing while nobody watches.
"""

from __future__ import annotations

from kanal.config import App
from kanal.console import Recorder
from kanal.hub.connection import Local
from kanal.protocol.presence import Member
from kanal.protocol.session import Refusal, Relay

__all__ = ["client_event", "connected", "refused", "signed_in", "subscribed"]


def connected(
    console: Recorder, app: App, socket_id: str, origin: str | None, refused: tuple[int, str] | None
) -> None:
    """A new connection, and its close at once when a quota refused it (no session exists)."""
    console.event(app.id, "connected", socket_id=socket_id, origin=origin)
    if refused is not None:
        console.event(app.id, "disconnected", socket_id=socket_id, code=refused[0])


def subscribed(console: Recorder, local: Local, channel: str, member: Member | None) -> None:
    user_id = None if member is None else member.user_id
    console.event(
        local.session.app.id,
        "subscribed",
        socket_id=local.conn.socket_id,
        channel=channel,
        user_id=user_id,
    )


def refused(console: Recorder, local: Local, refusal: Refusal) -> None:
    """A subscription refused (``code``: its status) or another frame answered with
    ``pusher:error`` (``code``: that error's code). A signature error's hint quotes the
    signature the client sent: the console never shows a signature, only that it was wrong."""
    message = refusal.message
    if message.startswith("Invalid signature"):
        message = "Invalid signature"
    console.event(
        local.session.app.id,
        "refused",
        socket_id=local.conn.socket_id,
        channel=refusal.channel,
        code=refusal.code,
        message=message,
    )


def client_event(console: Recorder, local: Local, relay: Relay, user_id: str | None) -> None:
    console.event(
        local.session.app.id,
        "client_event",
        socket_id=local.conn.socket_id,
        channel=relay.channel,
        event=relay.event,
        size=len(relay.data.encode()),
        user_id=user_id,
    )


def signed_in(console: Recorder, local: Local, user_id: str) -> None:
    console.event(
        local.session.app.id, "signed_in", socket_id=local.conn.socket_id, user_id=user_id
    )
