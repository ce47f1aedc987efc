"""AnnouncedRosters: per presence channel, the member list this node's subscribers were told.

Ownership rule: only :class:`kanal.hub.Hub` creates and changes these rosters; they are the
hub's state, kept here so that the bookkeeping follows one rule. A roster is
user_id -> user_info: the ``subscription_succeeded`` roster of the channel's local
subscribers plus every ``member_added`` and minus every ``member_removed`` sent to them. One
roster per (app, channel) is enough because the hub keeps every local subscriber's list equal
to it: a joiner gets exactly the roster (:func:`kanal.protocol.presence.joiner_roster`), and
each member event goes to every local subscriber or to none.

What it is for: a member event whose user the roster already shows (or, for a removal, does
not show) is a duplicate and is dropped, whoever sent it (the broker, a rebuild, another
node in a race); and after a Redis outage the hub can compare it with the cluster's roster
and send only what its subscribers missed (:meth:`kanal.hub.Hub.reconcile_presence`).

A roster exists while its channel has local subscribers, or a local join of it is waiting
for the store's answer; it disappears with the last local subscriber, so the table never
grows with history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping, Set
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

from kanal.protocol import events
from kanal.protocol.presence import Reconciliation, joiner_roster, reconcile

__all__ = ["AnnouncedRoster", "AnnouncedRosters", "RosterReader"]

RosterReader = Callable[[str, str], Awaitable[dict[str, Any]]]  # (app_id, channel) -> roster
ChannelLock = Callable[[str, str], AbstractAsyncContextManager[Any]]
Send = Callable[[str, str, bytes], None]  # to every local subscriber of (app_id, channel)

_RECONCILE_AT_ONCE = 16  # roster reads in flight (the Redis pool has 32 connections)


class AnnouncedRoster:
    """One channel's announced members, and who was touched while the store was read."""

    __slots__ = ("_watches", "absent", "members")

    def __init__(self) -> None:
        self.members: dict[str, Any] = {}
        # Consecutive reconciliations in which an announced user was missing from the store.
        self.absent: dict[str, int] = {}
        self._watches: list[set[str]] = []

    def apply(self, added: bool, user_id: str, user_info: Any = None) -> bool:
        """Record one member event; false if the subscribers already know (a duplicate)."""
        for touched in self._watches:
            touched.add(user_id)
        self.absent.pop(user_id, None)
        if added:
            if user_id in self.members:
                return False
            self.members[user_id] = user_info
            return True
        return self.members.pop(user_id, _MISSING) is not _MISSING

    def admit(
        self, stored: Mapping[str, Any], own: str, touched: Set[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A local join answered with the store's roster ``stored``: returns the joiner's
        roster, which becomes this one, and the members to announce to the others first."""
        members, added = joiner_roster(self.members, stored, own, touched)
        self.members = dict(members)
        return members, added

    def settle(
        self, stored: Mapping[str, Any], touched: Set[str], confirmations: int, restart: bool
    ) -> Reconciliation:
        """Compare with the store's roster and take on the changes the subscribers must now
        be sent; ``restart`` forgets the absences counted before."""
        absent = {} if restart else self.absent
        plan = reconcile(self.members, stored, touched, absent, confirmations)
        self.absent = dict(plan.absent)
        for user_id in plan.removed:
            del self.members[user_id]
        self.members.update(plan.added)
        return plan

    @contextmanager
    def watch(self) -> Iterator[set[str]]:
        """Collect the user ids of member events applied inside the block (while the hub
        awaits the store): for them the event stream is newer than, or as new as, the
        store's answer, whose order relative to pub/sub deliveries is unknown."""
        touched: set[str] = set()
        self._watches.append(touched)
        try:
            yield touched
        finally:
            self._watches.remove(touched)


_MISSING = object()


class AnnouncedRosters:
    """``(app_id, channel) -> AnnouncedRoster`` for the presence channels of this node."""

    __slots__ = ("_rosters",)

    def __init__(self) -> None:
        self._rosters: dict[tuple[str, str], AnnouncedRoster] = {}

    def __len__(self) -> int:
        return len(self._rosters)

    def get(self, app_id: str, channel: str) -> AnnouncedRoster | None:
        return self._rosters.get((app_id, channel))

    def open(self, app_id: str, channel: str) -> AnnouncedRoster:
        """The channel's roster, made empty if it has none (its first local join)."""
        roster = self._rosters.get((app_id, channel))
        if roster is None:
            roster = self._rosters[(app_id, channel)] = AnnouncedRoster()
        return roster

    def discard(self, app_id: str, channel: str) -> None:
        """The channel has no local subscriber any more: nobody is left to tell."""
        self._rosters.pop((app_id, channel), None)

    def channels(self) -> list[tuple[str, str]]:
        """A snapshot of the (app_id, channel) pairs that have a roster."""
        return list(self._rosters)

    async def reconcile(
        self,
        read: RosterReader,
        lock: ChannelLock,
        send: Send,
        *,
        confirmations: int,
        restart: bool,
    ) -> int:
        """For :meth:`kanal.hub.Hub.reconcile_presence`: compare every roster with the
        store's (``read``) under the hub's channel lock, so no local join or leave runs
        meanwhile, and ``send`` the member frames the subscribers are missing; returns how
        many were sent. See :func:`kanal.protocol.presence.reconcile` for the rules and
        ``confirmations``; ``restart`` forgets absences counted by earlier calls (what Redis
        held before a new outage proves nothing now)."""
        channels, sent = self.channels(), 0
        # A batch of channels at a time: many channels cost a few round trips each, not one
        # each, and do not hold up the lease renewal that follows.
        for start in range(0, len(channels), _RECONCILE_AT_ONCE):
            results = await asyncio.gather(
                *(
                    self._reconcile_one(app_id, channel, read, lock, send, confirmations, restart)
                    for app_id, channel in channels[start : start + _RECONCILE_AT_ONCE]
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
                sent += result
        return sent

    async def _reconcile_one(
        self,
        app_id: str,
        channel: str,
        read: RosterReader,
        lock: ChannelLock,
        send: Send,
        confirmations: int,
        restart: bool,
    ) -> int:
        async with lock(app_id, channel):  # no local join or leave of it runs meanwhile
            roster = self._rosters.get((app_id, channel))
            if roster is None:  # its last local subscriber left meanwhile
                return 0
            with roster.watch() as touched:
                stored = await read(app_id, channel)
            plan = roster.settle(stored, touched, confirmations, restart)
            for user_id in plan.removed:
                send(app_id, channel, events.member_removed_frame(channel, user_id))
            for user_id, user_info in plan.added.items():
                send(app_id, channel, events.member_added_frame(channel, user_id, user_info))
            return len(plan.removed) + len(plan.added)
