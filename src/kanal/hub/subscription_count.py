"""When to announce ``subscription_count`` (channels.md §6, webhooks.md §4).

Ownership rule: the per-channel throttle state lives here and only here. On channels with
more than 100 subscribers the count is sent at most once every 5 seconds, and the last count
of each window is always sent eventually (a trailing timer fetches the current value).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kanal.config import App
from kanal.protocol.channels import ChannelType

__all__ = ["SubscriptionCounter"]

THROTTLE_ABOVE = 100
THROTTLE_SECONDS = 5.0

Publish = Callable[[App, str, int], Awaitable[None]]


class SubscriptionCounter:
    """Decides whether a subscription-count change is announced now, later, or never."""

    def __init__(self, publish: Publish, monotonic: Callable[[], float]) -> None:
        self._publish = publish
        self._now = monotonic
        self._next_allowed: dict[tuple[str, str], float] = {}
        self._latest: dict[tuple[str, str], int] = {}
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def applies(app: App, kind: ChannelType) -> bool:
        """Non-presence, non-server-to-user channels of apps that enable it; encrypted
        channels only with their own opt-in (encryption.md §4)."""
        if not app.enable_subscription_count or kind.is_presence or kind.is_server_to_user:
            return False
        return not kind.is_encrypted or app.enable_encrypted_subscription_count

    async def changed(self, app: App, channel: str, kind: ChannelType, count: int) -> None:
        """A connection joined or left ``channel``, which now has ``count`` connections."""
        if not self.applies(app, kind):
            return
        key = (app.id, channel)
        now = self._now()
        if count <= THROTTLE_ABOVE and key not in self._timers:
            self._next_allowed.pop(key, None)
            await self._publish(app, channel, count)
            return
        self._latest[key] = count
        due = self._next_allowed.get(key, now)
        if key in self._timers:
            return
        if due <= now:
            self._flush(app, channel)
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(due - now, self._flush, app, channel)

    def _flush(self, app: App, channel: str) -> None:
        key = (app.id, channel)
        self._timers.pop(key, None)
        count = self._latest.pop(key, None)
        if count is None:
            return
        self._next_allowed[key] = self._now() + THROTTLE_SECONDS
        self._spawn(self._publish(app, channel, count))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        """Stop pending timers (shutdown)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
