"""Every WebSocket message in either direction: parsed into frozen values, written as bytes.

This is the only module that knows the wire envelope (protocol.md §2). Inbound frames are
parsed once, at the edge, into the dataclasses below; outbound frames are produced by the
``*_frame`` functions, each of which shows its exact output in its docstring.

The ``data`` rule (protocol.md §2.1): server-to-client ``data`` is a JSON *string* for every
event except ``pusher:error`` (an object) and ``pusher:signin_success`` (an object, as the
Pusher docs show it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kanal.protocol.errors import PusherError

__all__ = [
    "ClientEvent",
    "ClientMessage",
    "Ignored",
    "MemberEvent",
    "Ping",
    "Pong",
    "Signin",
    "Subscribe",
    "Unsubscribe",
    "cache_miss_frame",
    "channel_event_frame",
    "connection_established_frame",
    "error_frame",
    "member_added_frame",
    "member_removed_frame",
    "parse_client_message",
    "parse_member_event",
    "ping_frame",
    "pong_frame",
    "signin_success_frame",
    "subscription_count_frame",
    "subscription_error_frame",
    "subscription_succeeded_frame",
    "to_data_string",
    "watchlist_events_frame",
]


# --- client -> server --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """``pusher:ping``; ``data`` may be ``{}``, ``"{}"`` or absent (protocol.md §7.1)."""


@dataclass(frozen=True, slots=True)
class Pong:
    """``pusher:pong``: proof of life, no reply."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``pusher:subscribe`` (protocol.md §7.2); ``channel_data`` is kept as the signed text."""

    channel: str
    auth: str
    channel_data: str | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``pusher:unsubscribe`` (protocol.md §7.3)."""

    channel: str


@dataclass(frozen=True, slots=True)
class Signin:
    """``pusher:signin`` (users.md §2); ``user_data`` is kept as the signed text."""

    auth: str
    user_data: str


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """A ``client-*`` event; ``data`` is already the string to relay (protocol.md §2.1 rule 4)."""

    event: str
    channel: str | None
    data: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """An unknown ``pusher:*`` or non-client event: ignored (protocol.md §2.2)."""

    event: str


ClientMessage = Ping | Pong | Subscribe | Unsubscribe | Signin | ClientEvent | Ignored

_INVALID_JSON = "Invalid JSON"


def to_data_string(data: Any) -> str:
    """Relay form of client ``data``: strings unchanged, anything else as compact JSON.

    Raises:
        PusherError: (code ``None``) for data nested too deeply to write again (orjson reads
            1024 levels but writes 255).
    """
    if isinstance(data, str):
        return data
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:
        raise PusherError(None, "Client event rejected - data is nested too deeply") from None


def _object_data(envelope: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` of a ``pusher:*`` event as an object; a JSON string holding one is accepted."""
    data = envelope.get("data")
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            return {}
    return data if isinstance(data, dict) else {}


def _required_str(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise PusherError(None, f"Missing parameter: data.{name}")
    return value


def _parse_subscribe(data: Mapping[str, Any]) -> Subscribe:
    channel = _required_str(data, "channel")
    auth = data.get("auth")
    channel_data = data.get("channel_data")
    return Subscribe(
        channel=channel,
        auth=auth if isinstance(auth, str) else "",
        channel_data=channel_data if isinstance(channel_data, str) and channel_data else None,
    )


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse one inbound text frame.

    Raises:
        PusherError: (code ``None``) for invalid JSON, a non-object frame, a missing string
            ``event`` or a missing required ``data`` field. Never anything else.
    """
    try:
        envelope = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise PusherError(None, _INVALID_JSON) from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("event"), str):
        raise PusherError(None, _INVALID_JSON)
    event: str = envelope["event"]
    if event.startswith("client-"):
        channel = envelope.get("channel")
        return ClientEvent(
            event=event,
            channel=channel if isinstance(channel, str) else None,
            data=to_data_string(envelope.get("data", {})),
        )
    if event == "pusher:ping":
        return Ping()
    if event == "pusher:pong":
        return Pong()
    if event == "pusher:subscribe":
        return _parse_subscribe(_object_data(envelope))
    if event == "pusher:unsubscribe":
        return Unsubscribe(_required_str(_object_data(envelope), "channel"))
    if event == "pusher:signin":
        data = _object_data(envelope)
        return Signin(auth=_required_str(data, "auth"), user_data=_required_str(data, "user_data"))
    return Ignored(event)


# --- server -> client --------------------------------------------------------------------


def _frame(event: str, data: Any, channel: str | None = None) -> bytes:
    envelope: dict[str, Any] = {"event": event}
    if channel is not None:
        envelope["channel"] = channel
    envelope["data"] = data
    return orjson.dumps(envelope)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def connection_established_frame(socket_id: str, activity_timeout: int) -> bytes:
    """``{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"1.2\\",\\"activity_timeout\\":120}"}``"""
    data = {"socket_id": socket_id, "activity_timeout": activity_timeout}
    return _frame("pusher:connection_established", _json_text(data))


def error_frame(code: int | None, message: str) -> bytes:
    """``{"event":"pusher:error","data":{"code":4001,"message":"..."}}``: ``data`` is an object."""
    return _frame("pusher:error", {"code": code, "message": message})


def ping_frame() -> bytes:
    """``{"event":"pusher:ping","data":"{}"}``"""
    return _PING


def pong_frame() -> bytes:
    """``{"event":"pusher:pong","data":"{}"}``"""
    return _PONG


_PING = _frame("pusher:ping", "{}")
_PONG = _frame("pusher:pong", "{}")


def signin_success_frame(user_data: str) -> bytes:
    """``{"event":"pusher:signin_success","data":{"user_data":"<exact signed text>"}}``"""
    return _frame("pusher:signin_success", {"user_data": user_data})


def subscription_succeeded_frame(channel: str, presence: Mapping[str, Any] | None = None) -> bytes:
    """Non-presence: ``data`` ``"{}"``. Presence (protocol.md §4.5), ``presence`` maps user_id
    to user_info: ``"data":"{\\"presence\\":{\\"ids\\":[..],\\"hash\\":{..},\\"count\\":n}}"``."""
    if presence is None:
        return _frame("pusher_internal:subscription_succeeded", "{}", channel)
    roster = {"ids": list(presence), "hash": dict(presence), "count": len(presence)}
    return _frame(
        "pusher_internal:subscription_succeeded", _json_text({"presence": roster}), channel
    )


def subscription_error_frame(channel: str, kind: str, message: str, status: int) -> bytes:
    """``{"event":"pusher:subscription_error","channel":"c","data":"{\\"type\\":\\"AuthError\\",\\"error\\":\\"..\\",\\"status\\":401}"}``"""
    data = {"type": kind, "error": message, "status": status}
    return _frame("pusher:subscription_error", _json_text(data), channel)


def member_added_frame(channel: str, user_id: str, user_info: Any) -> bytes:
    """``{"event":"pusher_internal:member_added","channel":"presence-r","data":"{\\"user_id\\":\\"3\\",\\"user_info\\":{..}}"}``"""
    data = {"user_id": user_id, "user_info": user_info}
    return _frame("pusher_internal:member_added", _json_text(data), channel)


def member_removed_frame(channel: str, user_id: str) -> bytes:
    """``{"event":"pusher_internal:member_removed","channel":"presence-r","data":"{\\"user_id\\":\\"3\\"}"}``"""
    return _frame("pusher_internal:member_removed", _json_text({"user_id": user_id}), channel)


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """The change a ``member_added`` (``added``) or ``member_removed`` frame announces."""

    added: bool
    user_id: str
    user_info: Any = None


# Both member frames start like this (see _frame); no other frame can: the HTTP API refuses
# reserved event names and client events start with ``client-``.
_MEMBER_FRAME_START = b'{"event":"pusher_internal:member_'


def parse_member_event(payload: bytes) -> MemberEvent | None:
    """Read back a frame written by :func:`member_added_frame` / :func:`member_removed_frame`;
    ``None`` for any other payload. Costs one ``startswith`` for every other frame."""
    if not payload.startswith(_MEMBER_FRAME_START):
        return None
    try:
        envelope = orjson.loads(payload)
        data = orjson.loads(envelope["data"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    user_id = data.get("user_id") if isinstance(data, dict) else None
    if not isinstance(user_id, str):
        return None
    if envelope.get("event") == "pusher_internal:member_added":
        return MemberEvent(True, user_id, data.get("user_info"))
    if envelope.get("event") == "pusher_internal:member_removed":
        return MemberEvent(False, user_id)
    return None


def subscription_count_frame(channel: str, count: int) -> bytes:
    """``{"event":"pusher_internal:subscription_count","channel":"c","data":"{\\"subscription_count\\":3}"}``"""
    data = _json_text({"subscription_count": count})
    return _frame("pusher_internal:subscription_count", data, channel)


def cache_miss_frame(channel: str) -> bytes:
    """``{"event":"pusher:cache_miss","channel":"cache-prices","data":"{}"}``"""
    return _frame("pusher:cache_miss", "{}", channel)


def channel_event_frame(event: str, channel: str, data: str, user_id: str | None = None) -> bytes:
    """``{"event":"order-shipped","channel":"private-orders","data":"{\\"id\\":42}"}``, plus
    ``"user_id"`` for client events relayed on presence channels (protocol.md §4.11-4.12)."""
    envelope = {"event": event, "channel": channel, "data": data}
    if user_id is not None:
        envelope["user_id"] = user_id
    return orjson.dumps(envelope)


def watchlist_events_frame(events: Iterable[tuple[str, Iterable[str]]]) -> bytes:
    """``{"event":"pusher_internal:watchlist_events","data":"{\\"events\\":[{\\"name\\":\\"online\\",\\"user_ids\\":[\\"2\\"]}]}"}``"""
    items = [{"name": name, "user_ids": list(user_ids)} for name, user_ids in events]
    return _frame("pusher_internal:watchlist_events", _json_text({"events": items}))
