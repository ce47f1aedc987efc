"""What the cluster and the webhooks are told once the membership store has answered.

Ownership rule: the hub decides *that* something happened (a join, a leave, a count change)
from the store's atomic first/last answers; this module turns each such answer into the
broadcasts every node delivers (``member_added``, ``member_removed``,
``subscription_count``) and the webhook events, in the documented order
(channels.md §3.1 step 8, §3.5; webhooks.md §4). It keeps no
membership of its own: only the throttle state of :mod:`kanal.hub.subscription_count`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from kanal.adapters.base import Broker, Envelope, JoinResult, LeaveResult
from kanal.config import App
from kanal.hub.subscription_count import SubscriptionCounter
from kanal.protocol import events
from kanal.protocol import webhooks as hooks
from kanal.protocol.channels import ChannelType, channel_type
from kanal.protocol.presence import Member

__all__ = ["Announcer", "NullWebhooks", "WebhookSink"]


class WebhookSink(Protocol):
    """Receives every webhook event at the moment its cluster-wide transition is known."""

    def emit(self, app: App, event: hooks.WebhookEvent) -> None: ...


class NullWebhooks:
    """A sink for deployments (and tests) without webhook delivery."""

    def emit(self, app: App, event: hooks.WebhookEvent) -> None:
        return None


class Announcer:
    """Publishes through the broker and emits webhooks for the hub's membership changes."""

    def __init__(self, broker: Broker, webhooks: WebhookSink, monotonic: Callable[[], float]):
        self._broker = broker
        self.emit = webhooks.emit
        self._counter = SubscriptionCounter(self._publish_count, monotonic)

    def publish(
        self, app_id: str, channel: str, payload: bytes, exclude: str | None = None
    ) -> Awaitable[None]:
        # The broker's coroutine itself, not one around it: a frame less per trigger.
        return self._broker.publish(Envelope(app_id, "channel", channel, payload, exclude))

    async def joined(
        self, app: App, channel: str, result: JoinResult, member: Member | None, exclude: str | None
    ) -> None:
        """channel_occupied, then member_added (broadcast and webhook) for a first join."""
        if result.occupied:
            self.emit(app, hooks.channel_occupied(channel))
        if result.user_added and member is not None:
            frame = events.member_added_frame(channel, member.user_id, member.user_info)
            await self.publish(app.id, channel, frame, exclude=exclude)
            self.emit(app, hooks.member_added(channel, member.user_id))

    async def left(
        self, app: App, channel: str, result: LeaveResult, exclude: str | None = None
    ) -> None:
        """member_removed, the new subscription_count, then channel_vacated."""
        if result.user_removed is not None:
            frame = events.member_removed_frame(channel, result.user_removed)
            await self.publish(app.id, channel, frame, exclude=exclude)
            self.emit(app, hooks.member_removed(channel, result.user_removed))
        await self.count_changed(app, channel, channel_type(channel), result.subscription_count)
        if result.vacated:
            self.emit(app, hooks.channel_vacated(channel))

    async def count_changed(self, app: App, channel: str, kind: ChannelType, count: int) -> None:
        await self._counter.changed(app, channel, kind, count)

    async def _publish_count(self, app: App, channel: str, count: int) -> None:
        """channels.md §6: ``pusher_internal:subscription_count`` to every
        subscriber, and its webhook."""
        await self.publish(app.id, channel, events.subscription_count_frame(channel, count))
        self.emit(app, hooks.subscription_count(channel, count))
