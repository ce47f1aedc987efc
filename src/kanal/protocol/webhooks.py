"""Webhook event values and the request body (webhooks.md §2-3).

Pure data: :mod:`kanal.hub` creates these values at the moment a cluster-wide transition is
known, :mod:`kanal.webhooks` delays, batches, signs and sends them, or hands them to an embedded
app's in-process hooks as a :class:`HookEvent`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "EVENT_TYPES",
    "HookEvent",
    "WebhookEvent",
    "cache_miss",
    "channel_occupied",
    "channel_vacated",
    "client_event",
    "member_added",
    "member_removed",
    "subscription_count",
    "webhook_body",
]

EVENT_TYPES = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One element of the ``events`` array, exactly the documented fields (webhooks.md §3)."""

    name: str
    channel: str
    user_id: str | None = None
    event: str | None = None
    data: str | None = None
    socket_id: str | None = None
    subscription_count: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The event object; optional fields appear only when they apply."""
        out: dict[str, Any] = {"name": self.name, "channel": self.channel}
        if self.event is not None:
            out["event"] = self.event
        if self.data is not None:
            out["data"] = self.data
        if self.socket_id is not None:
            out["socket_id"] = self.socket_id
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.subscription_count is not None:
            out["subscription_count"] = self.subscription_count
        return out


@dataclass(frozen=True, slots=True)
class HookEvent:
    """What an in-process hook is called with (docs/embedding.md): the webhook event's fields,
    plus what a webhook request carries around it, its app and its ``time_ms``.

    ``time_ms`` is the Unix time in ms the event was released to its targets, the ``time_ms``
    a webhook request with it would carry (webhooks.md §2): for ``channel_vacated`` and
    ``member_removed`` the end of the grace period.
    """

    name: str
    channel: str
    app_id: str
    time_ms: int
    user_id: str | None = None
    event: str | None = None
    data: str | None = None
    socket_id: str | None = None
    subscription_count: int | None = None

    @classmethod
    def of(cls, app_id: str, event: WebhookEvent, time_ms: int) -> HookEvent:
        return cls(
            event.name,
            event.channel,
            app_id,
            time_ms,
            user_id=event.user_id,
            event=event.event,
            data=event.data,
            socket_id=event.socket_id,
            subscription_count=event.subscription_count,
        )


def channel_occupied(channel: str) -> WebhookEvent:
    """``{"name":"channel_occupied","channel":"my-channel"}``"""
    return WebhookEvent("channel_occupied", channel)


def channel_vacated(channel: str) -> WebhookEvent:
    """``{"name":"channel_vacated","channel":"my-channel"}``"""
    return WebhookEvent("channel_vacated", channel)


def member_added(channel: str, user_id: str) -> WebhookEvent:
    """``{"name":"member_added","channel":"presence-x","user_id":"1"}``"""
    return WebhookEvent("member_added", channel, user_id=user_id)


def member_removed(channel: str, user_id: str) -> WebhookEvent:
    """``{"name":"member_removed","channel":"presence-x","user_id":"1"}``"""
    return WebhookEvent("member_removed", channel, user_id=user_id)


def client_event(
    channel: str, event: str, data: str, socket_id: str, user_id: str | None
) -> WebhookEvent:
    """``{"name":"client_event","channel":..,"event":..,"data":"..","socket_id":..}``, plus
    ``user_id`` on presence channels."""
    return WebhookEvent(
        "client_event", channel, user_id=user_id, event=event, data=data, socket_id=socket_id
    )


def cache_miss(channel: str) -> WebhookEvent:
    """``{"name":"cache_miss","channel":"cache-prices"}``"""
    return WebhookEvent("cache_miss", channel)


def subscription_count(channel: str, count: int) -> WebhookEvent:
    """``{"name":"subscription_count","channel":"c","subscription_count":3}``"""
    return WebhookEvent("subscription_count", channel, subscription_count=count)


def webhook_body(time_ms: int, batch: Iterable[WebhookEvent]) -> bytes:
    """``{"time_ms":1327078148132,"events":[...]}`` as the exact bytes that get signed."""
    return orjson.dumps({"time_ms": time_ms, "events": [event.to_json() for event in batch]})
