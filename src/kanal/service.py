"""The Channels API's meaning, without HTTP: trigger, batch, channel info, users, terminate.

Ownership rule: what an HTTP API call *does* is decided here and only here, so every way in
(the HTTP API in :mod:`kanal.transport.http`, the embedded ASGI app, the in-process Python API,
the console) gets the same rules from one place. A caller hands in an :class:`App` and values
already parsed by :mod:`kanal.protocol.api` (which applies the per-app size and count limits);
this module admits the call (app enabled, request-rate limits), publishes through the hub,
reads counts from the cluster's membership store, and returns the JSON-ready answer or raises
:class:`~kanal.protocol.errors.ApiError`, which knows its HTTP status. Nothing here knows about
requests, signatures, paths or status lines: authentication is the caller's job.

The answers' shapes follow http-api.md §3-§6 and §8.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from kanal.adapters.base import ChannelCounts
from kanal.config import App
from kanal.hub import Hub
from kanal.protocol import api
from kanal.protocol.channels import SERVER_TO_USER_PREFIX, channel_type
from kanal.protocol.errors import ApiError

__all__ = ["ChannelsApi", "RateLimiter"]

JsonObject = dict[str, Any]


class RateLimiter:
    """Per-app token buckets for the optional request-rate limits (limits.md §4).

    A bucket holds up to ``rate`` tokens and refills at ``rate`` per second, so a burst of one
    second's worth is allowed and the long-run rate is capped.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, rate: int, now: float) -> bool:
        if rate <= 0:
            return True
        tokens, at = self._buckets.get(key, (float(rate), now))
        tokens = min(float(rate), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


def count_attributes(channel: str, counts: ChannelCounts, info: frozenset[str]) -> JsonObject:
    """The requested counts that apply to ``channel``: ``user_count`` on presence channels only,
    ``subscription_count`` on any (http-api.md §3, §5.1)."""
    out: JsonObject = {}
    if api.USER_COUNT in info and channel_type(channel).is_presence:
        out[api.USER_COUNT] = counts.user_count
    if api.SUBSCRIPTION_COUNT in info:
        out[api.SUBSCRIPTION_COUNT] = counts.subscription_count
    return out


class ChannelsApi:
    """One node's Channels API: the operations of the HTTP API as coroutines on values.

    Args:
        hub: the node's hub (publishing, user termination, the membership store).
        wall: Unix time, for cache channel TTLs.
        monotonic: the clock of the request-rate buckets.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hub = hub
        self._wall = wall
        self._monotonic = monotonic
        self._limits = RateLimiter()

    def admit(self, app: App, *, write: bool) -> None:
        """Refuse a call for a disabled app (403) or one over its request rate (429); every
        operation below starts with it, after its caller authenticated and parsed the call."""
        if not app.enabled:
            raise ApiError(403, "Application disabled")
        rate = app.max_backend_requests_per_second if write else app.max_read_requests_per_second
        if rate > 0 and not self._limits.allow(f"{app.id}:{write}", rate, self._monotonic()):
            raise ApiError(429, "Too many requests")

    # --- writes -------------------------------------------------------------------------

    async def trigger(self, app: App, event: api.TriggerEvent) -> Any:
        """Publish one event to each of its channels; ``{"channels": {...}}`` when the event
        asked for ``info``, else ``{}`` (http-api.md §3)."""
        self.admit(app, write=True)
        if self._hub.console.watching:
            self._report(app, event)
        for channel in event.channels:
            await self._hub.publish_event(app, channel, event.name, event.data, event.socket_id)
        if not event.info:
            return {}
        return {"channels": {ch: await self._info(app, ch, event.info) for ch in event.channels}}

    async def trigger_batch(self, app: App, events: Sequence[api.TriggerEvent]) -> Any:
        """Publish a batch in array order; ``{"batch": [...]}`` with one info object per event
        when any event asked for ``info``, else ``{}`` (http-api.md §4)."""
        self.admit(app, write=True)
        for event in events:
            if self._hub.console.watching:
                self._report(app, event)
            for channel in event.channels:
                await self._hub.publish_event(app, channel, event.name, event.data, event.socket_id)
        if not any(event.info for event in events):
            return {}
        return {"batch": [await self._info(app, e.channels[0], e.info) for e in events]}

    async def send_to_user(self, app: App, user_id: str, name: str, data: str) -> None:
        """Deliver an event to every connection signed in as ``user_id`` (the SDKs'
        ``send_to_user``, a trigger on ``#server-to-user-{user_id}``; users.md
        §4)."""
        channel = SERVER_TO_USER_PREFIX + api.parse_user_id(user_id)
        await self.trigger(app, api.trigger_event(app, name=name, channels=[channel], data=data))

    async def terminate_user_connections(self, app: App, user_id: str) -> Any:
        """Close every connection of ``user_id`` on every node (users.md §5)."""
        self.admit(app, write=True)
        user_id = api.parse_user_id(user_id)
        if self._hub.console.watching:
            self._hub.console.event(app.id, "terminated", user_id=user_id)
        await self._hub.terminate_user(app, user_id)
        return {}

    def _report(self, app: App, event: api.TriggerEvent) -> None:
        """What the live console shows of a trigger (docs/console.md)."""
        self._hub.console.event(
            app.id,
            "api_message",
            channels=list(event.channels),
            event=event.name,
            size=len(event.data.encode()),
            socket_id=event.socket_id,
        )

    async def _info(self, app: App, channel: str, info: frozenset[str]) -> JsonObject:
        if not info or channel.startswith(SERVER_TO_USER_PREFIX):
            return {}
        counts = await self._hub.membership.counts(app.id, channel)
        return count_attributes(channel, counts, info)

    # --- reads --------------------------------------------------------------------------

    async def channels(self, app: App, query: api.ChannelsQuery) -> Any:
        """Occupied channels, optionally by prefix, with the requested counts (§5.1)."""
        self.admit(app, write=False)
        listed = await self._hub.membership.channels(app.id, query.prefix)
        result: dict[str, JsonObject] = {}
        for name, counts in sorted(listed.items()):
            if name.startswith("#") or counts.subscription_count <= 0:
                continue
            result[name] = count_attributes(name, counts, query.info)
        return {"channels": result}

    async def channel(self, app: App, query: api.ChannelQuery) -> Any:
        """One channel's state: ``occupied`` and the requested attributes (§5.2)."""
        self.admit(app, write=False)
        counts = await self._hub.membership.counts(app.id, query.channel)
        out: JsonObject = {"occupied": counts.subscription_count > 0}
        if api.USER_COUNT in query.info:  # parsing allows it on presence channels only
            out[api.USER_COUNT] = counts.user_count
        if api.SUBSCRIPTION_COUNT in query.info:
            out[api.SUBSCRIPTION_COUNT] = counts.subscription_count
        if api.CACHE in query.info:
            cached = await self._hub.membership.cache_get(app.id, query.channel, self._wall())
            out[api.CACHE] = None if cached is None else {"data": cached.data, "ttl": cached.ttl}
        return out

    async def overview(self, app: App, *, max_channels: int, max_members: int) -> JsonObject:
        """The console's picture of an app, from the same store answers as the reads above
        (the cluster's, in cluster mode): connections, the occupied channels as
        :meth:`channels` lists them, and each presence channel's members (user_id,
        user_info), at most ``max_channels`` and ``max_members`` of them. No admission: an
        operator's read must not spend the app's request budget."""
        membership = self._hub.membership
        listed = await membership.channels(app.id, "")
        visible = sorted(
            (name, counts)
            for name, counts in listed.items()
            if not name.startswith("#") and counts.subscription_count > 0
        )
        channels = [
            await self._described(app, n, c, max_members) for n, c in visible[:max_channels]
        ]
        return {
            "connections": await membership.connection_count(app.id),
            "channel_count": len(visible),
            "channels": channels,
        }

    async def _described(
        self, app: App, name: str, counts: ChannelCounts, max_members: int
    ) -> JsonObject:
        entry: JsonObject = {"name": name, "subscription_count": counts.subscription_count}
        if channel_type(name).is_presence:
            roster = await self._hub.membership.roster(app.id, name)
            entry["user_count"] = counts.user_count
            entry["members"] = [
                {"user_id": user_id, "user_info": info}
                for user_id, info in list(roster.items())[:max_members]
            ]
        return entry

    async def users(self, app: App, channel: str) -> Any:
        """The user ids subscribed to a presence channel (http-api.md §6)."""
        self.admit(app, write=False)
        user_ids = await self._hub.membership.users(app.id, channel)
        return {"users": [{"id": user_id} for user_id in user_ids]}
