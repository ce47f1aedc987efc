"""Cache channels: the last event of each ``cache-`` channel, replayed to new subscribers
(channels.md §5).

Ownership rule: the cached events themselves live in the cluster's membership store (so every
node replays the same one); this module owns the rules around them: what is stored on publish,
what a new subscriber is sent, and when a ``cache_miss`` webhook is due (at most one per
channel per 5 s across the cluster, claimed atomically in the store;
webhooks.md §4).
"""

from __future__ import annotations

from collections.abc import Callable

from kanal.adapters.base import Membership
from kanal.config import App
from kanal.protocol import events
from kanal.protocol import webhooks as hooks

__all__ = ["CACHE_MISS_WINDOW", "ChannelCache"]

CACHE_MISS_WINDOW = 5.0


class ChannelCache:
    """Stores and replays the last event of cache channels."""

    def __init__(
        self,
        membership: Membership,
        emit: Callable[[App, hooks.WebhookEvent], None],
        wall: Callable[[], float],
    ) -> None:
        self._membership = membership
        self._emit = emit
        self._wall = wall

    async def remember(self, app: App, channel: str, name: str, data: str) -> None:
        """An event published to a cache channel becomes its cached event for ``cache_ttl``."""
        await self._membership.cache_put(app.id, channel, name, data, app.cache_ttl, self._wall())

    async def replay(self, app: App, channel: str) -> bytes:
        """The payload for a new subscriber: the cached event, or ``pusher:cache_miss`` (and,
        once per window in the cluster, the ``cache_miss`` webhook)."""
        cached = await self._membership.cache_get(app.id, channel, self._wall())
        if cached is not None:
            return events.channel_event_frame(cached.event, channel, cached.data)
        now = self._wall()
        if await self._membership.claim_cache_miss(app.id, channel, CACHE_MISS_WINDOW, now):
            self._emit(app, hooks.cache_miss(channel))
        return events.cache_miss_frame(channel)
