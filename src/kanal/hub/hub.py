"""Hub: the one owner of channel and user membership on this node.

Ownership rule: which local connection is in which channel, and which local connection is
signed in as which user, is recorded here and nowhere else. The hub carries out the
:data:`~kanal.protocol.session.Command` values that sessions return, is the only caller of the
cluster seam (:class:`~kanal.adapters.base.Membership`, :class:`~kanal.adapters.base.Broker`),
and the only producer of webhook events.

The modules beside this one hold parts of the hub's state and change only through it
(:mod:`kanal.hub` lists them).

Fan-out (docs/design.md, "Fan-out"): an event is serialised to JSON once by its publisher;
each node frames it once (``frame``) and hands the same bytes to every local subscriber. No
JSON work happens per recipient.

Presence: every local subscriber of a presence channel holds the same member list, the
channel's announced roster (:mod:`kanal.hub.rosters`); member events that would not change it
are duplicates and are dropped, and :meth:`Hub.reconcile_presence` repairs it from the
cluster's roster after a Redis outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from typing import Any

from kanal.adapters.base import READY, Broker, Envelope, JoinResult, LeaveResult, Membership
from kanal.adapters.memory import MemoryBroker
from kanal.config import App
from kanal.console import Recorder
from kanal.hub import log_lines, reports
from kanal.hub.announce import Announcer, NullWebhooks, WebhookSink
from kanal.hub.cache import ChannelCache
from kanal.hub.connection import Connection, Local
from kanal.hub.index import SocketIndex
from kanal.hub.rosters import AnnouncedRosters, RosterReader
from kanal.hub.users import Users
from kanal.metrics import Metrics
from kanal.protocol import events
from kanal.protocol import webhooks as hooks
from kanal.protocol.channels import SERVER_TO_USER_PREFIX, channel_type
from kanal.protocol.errors import CloseCode
from kanal.protocol.presence import Member
from kanal.protocol.session import (
    Close,
    Command,
    Join,
    Leave,
    Probe,
    Refusal,
    Relay,
    Send,
    Session,
    SignIn,
)

__all__ = ["FANOUT_SAMPLE", "Connection", "Hub", "NullWebhooks", "WebhookSink"]

#: One broadcast in this many is timed for ``kanal_broadcast_fanout_seconds``: timing every
#: one cost ~3,800 instructions (two clock reads and a histogram sample), more than the rest
#: of a small broadcast's counting (docs/metrics.md, "What counting costs").
FANOUT_SAMPLE = 16


class Hub:
    """Carries out session commands and broadcasts for one node.

    Args:
        membership: the cluster's membership store.
        broker: the cluster's fan-out.
        webhooks: where webhook events go.
        frame: turns a JSON payload into the bytes written to a connection (done once per
            broadcast per node).
        monotonic: clock for heartbeats and throttles; ``wall``: Unix time for cache TTLs and
            a rotating app's previous secret.
        max_connections: server-wide cap (0 = none); over it, close 4100.
        console: where the live console's records go (:mod:`kanal.console`); every report
            is guarded by ``console.watching``, so an unwatched node does no work for it.
    """

    def __init__(
        self,
        *,
        membership: Membership,
        broker: Broker,
        webhooks: WebhookSink,
        frame: Callable[[bytes], bytes],
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        max_connections: int = 0,
        metrics: Metrics | None = None,
        console: Recorder | None = None,
    ) -> None:
        self.membership = membership
        self.console = console if console is not None else Recorder()
        self.metrics = metrics if metrics is not None else Metrics()
        self._broker = broker
        # Memory mode: every envelope comes back to this hub alone, so a channel without a
        # local subscriber has none anywhere and an event to it can stop before its frame.
        self._only_node = isinstance(broker, MemoryBroker)
        self._announce = Announcer(broker, webhooks, monotonic)
        self._wall = wall
        self._cache = ChannelCache(membership, self._announce.emit, wall)
        self._frame = frame
        self._now = monotonic
        self._max_connections = max_connections
        self._untimed = 0  # broadcasts before the next timed one
        self._locals: dict[str, Local] = {}
        self._channels: SocketIndex[Connection] = SocketIndex()
        self._users = Users(membership, broker, frame, self.refuse)
        self._rosters = AnnouncedRosters()
        self._channel_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        broker.attach(self.deliver)

    # --- connection lifecycle -----------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._locals)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def refuse(self, conn: Connection, code: int, reason: str) -> None:
        """protocol.md §1.2: ``pusher:error`` with the code, then close with it."""
        conn.send(self._frame(events.error_frame(code, reason)))
        conn.close(code, reason)

    async def open(
        self, conn: Connection, app: App, origin: str | None = None, peer: str | None = None
    ) -> bool:
        """Admit a connection (quota checks, §1.2 steps 7-8); false if it was refused.
        ``origin``: the handshake's Origin header, for the console's log; ``peer``: the
        client's address, for the log."""
        refused = None
        if 0 < self._max_connections <= len(self._locals):
            refused = CloseCode.OVER_CAPACITY, "Over capacity"
        elif not await self.membership.add_connection(app.id, conn.socket_id, app.max_connections):
            refused = CloseCode.OVER_QUOTA, "Application is over connection quota"
        if self.console.watching:
            reports.connected(self.console, app, conn.socket_id, origin, refused)
        if refused is not None:
            log_lines.refused_connection(app.id, conn.socket_id, peer, *refused)
            self.refuse(conn, *refused)
            return False
        log_lines.opened(app.id, conn.socket_id, peer)
        session = Session(app, conn.socket_id, self._now())
        self._locals[conn.socket_id] = Local(conn, session)
        self.metrics.apps[app.id].opened += 1
        conn.send(self._frame(session.established().payload))
        return True

    async def receive(self, socket_id: str, text: str | bytes) -> None:
        """One inbound text frame; commands run in order (per-connection ordering)."""
        local = self._locals.get(socket_id)
        if local is None:
            return
        self.metrics.apps[local.session.app.id].received += 1
        if self.console.watching:
            self.console.received(local.session.app.id)
        for command in local.session.receive(text, self._now(), self._wall()):
            await self._execute(local, command)

    def activity(self, socket_id: str) -> None:
        """A Ping/Pong control frame arrived: proof of life (protocol.md §5.2 rule 3)."""
        local = self._locals.get(socket_id)
        if local is not None:
            local.session.activity(self._now())

    def tick(self) -> None:
        """Run heartbeat and authorization deadlines of every local session."""
        now = self._now()
        for local in list(self._locals.values()):
            for command in local.session.tick(now):
                if isinstance(command, Probe):
                    local.conn.probe()
                    self._send(local, events.ping_frame())
                elif isinstance(command, Close):
                    self.refuse(local.conn, command.code, command.reason)

    async def closed(self, socket_id: str, code: int | None = None) -> None:
        """Clean up a connection exactly once, whatever closed it (protocol.md §3); ``code``
        is the close code sent or received (1006: none), for the console's log."""
        local = self._locals.pop(socket_id, None)
        if local is None:
            return
        local.session.close()
        app = local.session.app
        self.metrics.apps[app.id].closed += 1
        log_lines.closed(app.id, socket_id, code)
        if self.console.watching:
            self.console.event(app.id, "disconnected", socket_id=socket_id, code=code)
        for channel in list(local.channels):
            await self._leave(local, channel)
        if local.user is not None:
            await self._users.sign_out(local)
        await self.membership.remove_connection(app.id, socket_id)

    def close_app(self, app_id: str, code: int, reason: str) -> int:
        """Close every local connection of one app (disabled or removed: 4003); how many."""
        closing = [local for local in self._locals.values() if local.session.app.id == app_id]
        for local in closing:
            self.refuse(local.conn, code, reason)
        return len(closing)

    def reconfigure_app(self, app: App) -> int:
        """A reload changed ``app``: its local connections use it from their next frame on
        (:meth:`Session.reconfigure`); how many."""
        changing = [local for local in self._locals.values() if local.session.app.id == app.id]
        for local in changing:
            local.session.reconfigure(app)
        return len(changing)

    def close_all(self, code: int, reason: str) -> None:
        """Graceful shutdown: every client reconnects elsewhere (close 4200)."""
        for local in list(self._locals.values()):
            self.refuse(local.conn, code, reason)

    # --- commands -----------------------------------------------------------------------

    async def _execute(self, local: Local, command: Command) -> None:
        if isinstance(command, Send):
            self._send(local, command.payload)
            if command.refusal is not None:
                log_lines.refused_frame(local.session.app.id, local.conn.socket_id, command.refusal)
                if self.console.watching:
                    reports.refused(self.console, local, command.refusal)
        elif isinstance(command, Join):
            await self._join(local, command)
        elif isinstance(command, Leave):
            await self._leave(local, command.channel)
        elif isinstance(command, Relay):
            await self._relay(local, command)
        elif isinstance(command, SignIn):
            await self._users.sign_in(local, command.user, command.reply)
            if self.console.watching:
                reports.signed_in(self.console, local, command.user.user_id)
        elif isinstance(command, Close):
            self.refuse(local.conn, command.code, command.reason)

    def _send(self, local: Local, payload: bytes) -> None:
        local.conn.send(self._frame(payload))

    def _channel_lock(self, app_id: str, channel: str) -> asyncio.Lock:
        """Serialises joins and leaves per channel on this node, so the order the store
        answered in is the order the local index changes in (the roster a joiner gets and
        the member events it receives then agree)."""
        lock = self._channel_locks.get((app_id, channel))
        if lock is None:
            lock = self._channel_locks[(app_id, channel)] = asyncio.Lock()
        return lock

    async def _join(self, local: Local, command: Join) -> None:
        async with self._channel_lock(local.session.app.id, command.channel):
            await self._join_locked(local, command)

    async def _join_locked(self, local: Local, command: Join) -> None:
        """channels.md §3.1 steps 3 and 5-8."""
        app, channel, socket_id = local.session.app, command.channel, local.conn.socket_id
        kind = command.channel_type
        if kind.is_server_to_user:  # users.md §3: not counted anywhere
            local.channels[channel] = None
            self._send(local, events.subscription_succeeded_frame(channel))
            return
        max_users = app.max_presence_members if kind.is_presence else 0
        already = channel in local.channels
        # Before the store is asked: every member change after the roster is read, and
        # every event after subscription_succeeded, then reaches this node (Broker.listen).
        ready = self._broker.listen(app.id, "channel", channel) if not already else READY
        roster = self._rosters.open(app.id, channel) if kind.is_presence else None
        watching: contextlib.AbstractContextManager[set[str]] = (
            roster.watch() if roster is not None else contextlib.nullcontext(set())
        )
        try:
            await ready
            with watching as touched:
                result = await self.membership.join(
                    app.id, channel, socket_id, command.member, max_users
                )
        except BaseException:  # a roster nobody holds would go stale
            self._join_undone(app.id, channel, already)
            raise
        if result.refused:
            self._join_undone(app.id, channel, already)
            text = f"Presence channel member limit reached ({app.max_presence_members})"
            refusal = Refusal(channel, 403, text)
            frame = events.subscription_error_frame(channel, "LimitReached", text, 403)
            await self._execute(local, Send(frame, refusal))
            self._send(local, events.error_frame(None, text))
            return
        local.channels[channel] = command.member
        self._channels.add(app.id, channel, socket_id, local.conn)
        members, added = result.presence, dict[str, Any]()
        if roster is not None and members is not None and command.member is not None:
            # The joiner and the channel's other local subscribers end up with one list.
            members, added = roster.admit(members, command.member.user_id, touched)
        # channels.md §3.1 step 7: subscription_succeeded precedes every other frame.
        self._send(local, events.subscription_succeeded_frame(channel, members))
        for user_id, user_info in added.items():  # local only; later copies are duplicates
            frame = events.member_added_frame(channel, user_id, user_info)
            self._fan_out(app.id, channel, frame, exclude=socket_id)
        if already:  # §3.1 step 3: idempotent re-subscribe, no events or webhooks
            return
        if self.console.watching:
            reports.subscribed(self.console, local, channel, command.member)
        # channels.md §3.1 step 8: member_added, cache, subscription_count; webhooks in the
        # order channel_occupied, member_added, cache_miss, subscription_count.
        await self._announce.joined(app, channel, result, command.member, socket_id)
        if kind.cache:
            self._send(local, await self._cache.replay(app, channel))
        await self._announce.count_changed(app, channel, kind, result.subscription_count)

    def _join_undone(self, app_id: str, channel: str, already: bool) -> None:
        self._drop_unused_roster(app_id, channel)
        if not already:
            self._broker.unlisten(app_id, "channel", channel)

    async def announce_join(
        self, app: App, channel: str, result: JoinResult, socket_id: str
    ) -> None:
        """Events for a join the cluster learned late (a rebuild after a Redis outage)."""
        local = self._locals.get(socket_id)
        member = local.channels.get(channel) if local is not None else None
        # To the member's own connection too: after a lost lease the reaper's member_removed
        # about it may have reached it, and only this puts it back in its own member list.
        await self._announce.joined(app, channel, result, member, exclude=None)
        await self._announce.count_changed(
            app, channel, channel_type(channel), result.subscription_count
        )

    async def _leave(self, local: Local, channel: str) -> None:
        async with self._channel_lock(local.session.app.id, channel):
            await self._leave_locked(local, channel)

    async def _leave_locked(self, local: Local, channel: str) -> None:
        """channels.md §3.5; unknown channels are ignored silently (protocol.md §7.3)."""
        if channel not in local.channels:
            return
        del local.channels[channel]
        app, socket_id = local.session.app, local.conn.socket_id
        if self.console.watching:
            self.console.event(app.id, "unsubscribed", socket_id=socket_id, channel=channel)
        kind = channel_type(channel)
        if kind.is_server_to_user:
            return
        self._channels.remove(app.id, channel, socket_id)
        self._broker.unlisten(app.id, "channel", channel)
        self._drop_unused_roster(app.id, channel)
        result = await self.membership.leave(app.id, channel, socket_id)
        if result is not None:
            await self.announce_leave(app, channel, result, exclude=socket_id)

    async def announce_leave(
        self, app: App, channel: str, result: LeaveResult, exclude: str | None = None
    ) -> None:
        """channels.md §3.5 side effects of a leave, also for a dead node's connections."""
        await self._announce.left(app, channel, result, exclude)

    def _drop_unused_roster(self, app_id: str, channel: str) -> None:
        """Called under the channel lock when a subscriber left or a join was refused."""
        if not self._channels.get(app_id, channel):
            self._rosters.discard(app_id, channel)

    async def reconcile_presence(
        self, read: RosterReader | None = None, *, confirmations: int = 1, restart: bool = False
    ) -> int:
        """Send local presence subscribers the member events they missed (a Redis outage),
        comparing each announced roster with the store's (``read``; the cluster maintainer
        passes Redis itself) under the channel's lock: :meth:`AnnouncedRosters.reconcile`.
        Local only, never through the broker, and no webhooks (those were emitted once,
        where the store answered first/last). Returns how many member events were sent."""
        sent = await self._rosters.reconcile(
            read or self.membership.roster,
            self._channel_lock,
            self._fan_out,
            confirmations=confirmations,
            restart=restart,
        )
        self.metrics.presence_reconciled += sent
        return sent

    async def _relay(self, local: Local, command: Relay) -> None:
        """channels.md §8: subscribed senders only; never echoed; ``user_id`` on presence."""
        app, channel = local.session.app, command.channel
        if channel not in local.channels:
            self._send(
                local,
                events.error_frame(None, "Client event rejected - not subscribed to channel"),
            )
            return
        member = local.channels[channel]
        user_id = member.user_id if member is not None else None
        frame = events.channel_event_frame(command.event, channel, command.data, user_id)
        if self.console.watching:
            reports.client_event(self.console, local, command, user_id)
        await self._announce.publish(app.id, channel, frame, exclude=local.conn.socket_id)
        self._announce.emit(
            app,
            hooks.client_event(channel, command.event, command.data, local.conn.socket_id, user_id),
        )

    async def announce_presence_of_user(self, app: App, user_id: str, *, online: bool) -> None:
        """users.md §4: a user's first sign-in (online) or last sign-out (offline)."""
        await self._users.announce(app, user_id, online=online)

    def local_state(
        self,
    ) -> tuple[
        list[tuple[str, str, str, Member | None]], list[tuple[str, str, str]], list[tuple[str, str]]
    ]:
        """This node's subscriptions, sign-ins and connections (to rebuild Redis from)."""
        subscriptions, signed_in, connections = [], [], []
        for socket_id, local in self._locals.items():
            app_id = local.session.app.id
            connections.append((app_id, socket_id))
            if local.user is not None:
                signed_in.append((app_id, local.user.user_id, socket_id))
            for channel, member in local.channels.items():
                if not channel.startswith(SERVER_TO_USER_PREFIX):
                    subscriptions.append((app_id, channel, socket_id, member))
        return subscriptions, signed_in, connections

    # --- delivery from the broker (every node) -------------------------------------------

    def deliver(self, envelope: Envelope) -> None:
        """Carry out one broker envelope on this node. Frames once, sends the same bytes."""
        if envelope.kind == "channel":
            self._deliver_channel(envelope)
        else:
            self._users.deliver(envelope)

    def _deliver_channel(self, envelope: Envelope) -> None:
        exclude = envelope.exclude
        roster = self._rosters.get(envelope.app_id, envelope.target)
        if roster is not None:  # a presence channel with local subscribers (or a join)
            change = events.parse_member_event(envelope.payload)
            if change is not None:
                if not roster.apply(change.added, change.user_id, change.user_info):
                    return  # every local subscriber already knows (a local join's echo too)
                # Every local list equals the roster, the excluded joiner's too: a change
                # of it is news to all of them.
                exclude = None
        self._fan_out(envelope.app_id, envelope.target, envelope.payload, exclude)

    def _fan_out(
        self, app_id: str, channel: str, payload: bytes, exclude: str | None = None
    ) -> None:
        """Frame once; the same bytes to every local subscriber of ``channel`` but one."""
        subscribers = self._channels.get(app_id, channel)
        if not subscribers or (len(subscribers) == 1 and exclude in subscribers):
            return
        self._untimed -= 1
        timed = self._untimed < 0
        started = self._now() if timed else 0.0
        frame = self._frame(payload)
        for socket_id, conn in subscribers.items():
            if socket_id != exclude:
                conn.send(frame)
        sent = len(subscribers) - (exclude in subscribers)
        # One addition per broadcast, never per recipient (docs/metrics.md).
        self.metrics.apps[app_id].deliveries += sent
        if timed:
            self._untimed = FANOUT_SAMPLE - 1
            self.metrics.fanout.observe(self._now() - started)
        if self.console.watching:
            self.console.delivered(app_id, sent)

    # --- used by kanal.service ------------------------------------------------------------

    async def publish_event(
        self, app: App, channel: str, name: str, data: str, socket_id: str | None
    ) -> None:
        """channels.md §7: publish one HTTP API event to one channel."""
        if channel.startswith(SERVER_TO_USER_PREFIX):
            user_id = channel[len(SERVER_TO_USER_PREFIX) :]
            payload = events.channel_event_frame(name, channel, data)
            await self._users.publish(app, user_id, payload, socket_id)
            return
        if channel_type(channel).cache:
            await self._cache.remember(app, channel, name, data)
        if self._only_node and not self._channels.get(app.id, channel):
            return
        payload = events.channel_event_frame(name, channel, data)
        await self._announce.publish(app.id, channel, payload, exclude=socket_id)

    async def terminate_user(self, app: App, user_id: str) -> None:
        """users.md §5: close every connection signed in as ``user_id``, on every node."""
        await self._users.terminate(app, user_id)

    def is_subscribed(self, socket_id: str, channel: str) -> bool:
        local = self._locals.get(socket_id)
        return local is not None and channel in local.channels
