"""Signed-in users and watchlists on this node (users.md).

Ownership rule: which local connection is signed in as which user, and which local connection
watches which user, is recorded here and nowhere else; the :class:`~kanal.hub.Hub` calls in on
sign-in and close, and hands over the broker's user envelopes (server-to-user events,
terminate, online/offline). Whether a user is online across the cluster is the membership
store's answer, never counted here.
"""

from __future__ import annotations

from collections.abc import Callable

from kanal.adapters.base import Broker, Envelope, Membership
from kanal.config import App
from kanal.hub.connection import Connection, Local
from kanal.hub.index import SocketIndex
from kanal.protocol import events
from kanal.protocol.errors import CloseCode
from kanal.protocol.session import SignedInUser

__all__ = ["Users"]


class Users:
    """The hub's user tables: user -> signed-in connections, watched user -> watchers."""

    def __init__(
        self,
        membership: Membership,
        broker: Broker,
        frame: Callable[[bytes], bytes],
        refuse: Callable[[Connection, int, str], None],
    ) -> None:
        self._membership = membership
        self._broker = broker
        self._frame = frame
        self._refuse = refuse
        self._signed_in: SocketIndex[Local] = SocketIndex()
        self._watchers: SocketIndex[Local] = SocketIndex()

    async def sign_in(self, local: Local, user: SignedInUser, reply: bytes) -> None:
        """users.md §2 step 6: record the sign-in, then send ``reply`` (signin_success)."""
        app, socket_id = local.session.app, local.conn.socket_id
        watching = app.enable_watchlist_events
        first = local.user is None
        if not first:  # same id signing in again: replace the watchlist
            self._unwatch(local)
        # Counted at once (so a close meanwhile undoes exactly this), waited for together:
        # the user's events and its watchlist's online/offline reach this node before the
        # client learns it is signed in (one SUBSCRIBE in channel fan-out mode).
        ready = [self._broker.listen(app.id, "user", user.user_id)] if first else []
        if first:
            self._signed_in.add(app.id, user.user_id, socket_id, local)
        local.user = user
        for watched in dict.fromkeys(user.watchlist) if watching else ():
            ready.append(self._broker.listen(app.id, "user", watched))
            self._watchers.add(app.id, watched, socket_id, local)
        for waiting in ready:
            await waiting
        local.conn.send(self._frame(reply))
        if await self._membership.sign_in(app.id, user.user_id, socket_id):
            await self.announce(app, user.user_id, online=True)
        if not watching:
            return
        # users.md §4, initial status [choice]: omit an empty list, and send
        # nothing when both are.
        online = await self._membership.online(app.id, user.watchlist)
        lists = (
            ("online", [u for u in user.watchlist if u in online]),
            ("offline", [u for u in user.watchlist if u not in online]),
        )
        status = [(name, ids) for name, ids in lists if ids]
        if status:
            local.conn.send(self._frame(events.watchlist_events_frame(status)))

    async def sign_out(self, local: Local) -> None:
        """The connection of a signed-in user closed."""
        assert local.user is not None
        app, user_id, socket_id = local.session.app, local.user.user_id, local.conn.socket_id
        self._unwatch(local)
        self._signed_in.remove(app.id, user_id, socket_id)
        self._broker.unlisten(app.id, "user", user_id)
        if await self._membership.sign_out(app.id, user_id, socket_id):
            await self.announce(app, user_id, online=False)

    def _unwatch(self, local: Local) -> None:
        if local.user is None:
            return
        app_id, socket_id = local.session.app.id, local.conn.socket_id
        for watched in dict.fromkeys(local.user.watchlist):
            if socket_id in self._watchers.get(app_id, watched):  # each listen undone once
                self._watchers.remove(app_id, watched, socket_id)
                self._broker.unlisten(app_id, "user", watched)

    async def announce(self, app: App, user_id: str, *, online: bool) -> None:
        """A user's first sign-in (online) or last sign-out (offline), to the watchers on every
        node (users.md §4)."""
        if app.enable_watchlist_events:
            kind = "online" if online else "offline"
            await self._broker.publish(Envelope(app.id, kind, user_id))

    async def publish(self, app: App, user_id: str, payload: bytes, exclude: str | None) -> None:
        """An event for every connection of ``user_id`` on every node (``#server-to-user-``)."""
        await self._broker.publish(Envelope(app.id, "user", user_id, payload, exclude))

    async def terminate(self, app: App, user_id: str) -> None:
        """Close every connection signed in as ``user_id``, on every node."""
        await self._broker.publish(Envelope(app.id, "terminate", user_id))

    # --- delivery from the broker (every node) -------------------------------------------

    def deliver(self, envelope: Envelope) -> None:
        """A ``user``, ``terminate``, ``online`` or ``offline`` envelope."""
        if envelope.kind == "user":
            self._deliver_to_user(envelope)
        elif envelope.kind == "terminate":
            for local in list(self._signed_in.get(envelope.app_id, envelope.target).values()):
                reason = "Connection terminated by the application"
                self._refuse(local.conn, CloseCode.UNAUTHORIZED, reason)
        elif envelope.kind in ("online", "offline"):
            watchers = self._watchers.get(envelope.app_id, envelope.target)
            if watchers:
                status = [(envelope.kind, [envelope.target])]
                frame = self._frame(events.watchlist_events_frame(status))
                for local in watchers.values():
                    local.conn.send(frame)

    def _deliver_to_user(self, envelope: Envelope) -> None:
        """users.md §3: every connection signed in as the user, subscribed or not."""
        sockets = self._signed_in.get(envelope.app_id, envelope.target)
        if not sockets:
            return
        frame = self._frame(envelope.payload)
        for socket_id, local in sockets.items():
            if socket_id != envelope.exclude:
                local.conn.send(frame)
