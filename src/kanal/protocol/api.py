"""HTTP API request rules as values (http-api.md §3-6, §8; limits.md §4).

Ownership: this module turns the *authenticated* inputs of the REST endpoints (a JSON body, a
decoded query mapping, path segments) into frozen request values, or raises
:class:`~kanal.protocol.errors.ApiError` with the documented status: 400 for bad input, 413
for event data over ``App.max_event_payload_bytes``. Signatures are checked before this, in
:mod:`kanal.protocol.signatures`; routing, app lookup, 403/404 and the body-size cap belong to
the transport. Nothing here touches the network, the clock or channel state.

Every message is one line; client-supplied strings are quoted with :func:`repr` (truncated),
so control characters cannot break the ``text/plain`` body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from kanal.config import App
from kanal.protocol.channels import channel_type, is_valid_channel_name, is_valid_user_id
from kanal.protocol.errors import ApiError

__all__ = [
    "CACHE",
    "SUBSCRIPTION_COUNT",
    "USER_COUNT",
    "ChannelQuery",
    "ChannelsQuery",
    "TriggerEvent",
    "batch_events",
    "parse_batch",
    "parse_channel_query",
    "parse_channels_query",
    "parse_trigger",
    "parse_user_id",
    "parse_users_channel",
    "trigger_event",
]

_SOCKET_ID_RE = re.compile(r"[0-9]+\.[0-9]+")  # ASCII only: ``\d`` would admit other digits
_RESERVED_EVENT_PREFIXES = ("pusher:", "pusher_internal:")
_ENCRYPTED_PREFIX = "private-encrypted-"
_MAX_QUOTE = 80

USER_COUNT = "user_count"
SUBSCRIPTION_COUNT = "subscription_count"
CACHE = "cache"


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """One event to publish (http-api.md §3, or one element of a batch, §4).

    ``channels`` holds distinct names in request order; ``info`` the requested attribute
    names (unknown ones kept, and ignored by the response builder, §3).
    """

    name: str
    channels: tuple[str, ...]
    data: str
    socket_id: str | None
    info: frozenset[str]


@dataclass(frozen=True, slots=True)
class ChannelsQuery:
    """``GET /apps/{id}/channels`` (http-api.md §5.1); ``prefix`` is ``""`` for no filter."""

    prefix: str
    info: frozenset[str]


@dataclass(frozen=True, slots=True)
class ChannelQuery:
    """``GET /apps/{id}/channels/{channel}`` (http-api.md §5.2)."""

    channel: str
    info: frozenset[str]


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _quote(value: str) -> str:
    """A client-supplied string, shortened and escaped for a one-line message."""
    if len(value) > _MAX_QUOTE:
        return repr(value[:_MAX_QUOTE]) + "..."
    return repr(value)


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad("Invalid JSON") from None
    if not isinstance(value, dict):
        raise _bad("Request body must be a JSON object")
    return value


def _split_info(raw: str) -> frozenset[str]:
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


# --------------------------------------------------------------------------------------------
# Events (http-api.md §3-4)


def _event_name(obj: Mapping[str, Any], app: App) -> str:
    name = obj.get("name")
    if name is None:
        raise _bad("Missing parameter: name")
    if not isinstance(name, str):
        raise _bad("name must be a string")
    if not 0 < len(name) <= app.max_event_name_length:
        raise _bad(f"Event name must be 1 to {app.max_event_name_length} characters long")
    if name.startswith(_RESERVED_EVENT_PREFIXES):
        raise _bad(
            f"Event name {_quote(name)} uses a reserved prefix (pusher: or pusher_internal:)"
        )
    return name


def _event_data(obj: Mapping[str, Any], app: App) -> str:
    data = obj.get("data")
    if data is None:
        raise _bad("Missing parameter: data")
    if not isinstance(data, str):
        raise _bad("data must be a string")
    size = len(data) if data.isascii() else len(data.encode("utf-8", "surrogatepass"))
    if size > app.max_event_payload_bytes:
        raise ApiError(
            413, f"Event data too large: {size} bytes (limit {app.max_event_payload_bytes})"
        )
    return data


def _check_channel_name(name: object, app: App) -> str:
    if not isinstance(name, str):
        raise _bad("Channel names must be strings")
    if not is_valid_channel_name(name, app.max_channel_name_length):
        raise _bad(f"Invalid channel name: {_quote(name)}")
    return name


def _channel_list(raw: object, app: App) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise _bad("channels must be an array of strings")
    if not raw:
        raise _bad("channels must not be empty")
    if len(raw) > app.max_channels_per_trigger:
        raise _bad(f"Too many channels: {len(raw)} (limit {app.max_channels_per_trigger})")
    if len(raw) == 1:  # what the SDKs send for one channel: nothing to de-duplicate
        return (_check_channel_name(raw[0], app),)
    # De-duplicated in order: an event must not reach a connection twice (http-api.md §3).
    channels = tuple(dict.fromkeys([_check_channel_name(name, app) for name in raw]))
    if len(channels) > 1 and any(name.startswith(_ENCRYPTED_PREFIX) for name in channels):
        raise _bad("Cannot trigger on more than one channel when one is private-encrypted-")
    return channels


def _event_channels(obj: Mapping[str, Any], app: App, *, in_batch: bool) -> tuple[str, ...]:
    if in_batch:
        if "channels" in obj:
            raise _bad("Batch events take a single channel, not channels")
    elif obj.get("channels") is not None:
        return _channel_list(obj["channels"], app)  # [choice] channels wins over channel
    channel = obj.get("channel")
    if channel is None:
        raise _bad("Missing parameter: channel" if in_batch else "Missing parameter: channels")
    if not isinstance(channel, str):
        raise _bad("channel must be a string")
    return (_check_channel_name(channel, app),)


def _event_socket_id(obj: Mapping[str, Any]) -> str | None:
    socket_id = obj.get("socket_id")
    if socket_id is None:
        return None
    if not isinstance(socket_id, str) or _SOCKET_ID_RE.fullmatch(socket_id) is None:
        raise _bad("Invalid socket_id: must match ^\\d+\\.\\d+$")
    return socket_id


def _event_info(obj: Mapping[str, Any]) -> frozenset[str]:
    info = obj.get("info")
    if info is None:
        return frozenset()
    if not isinstance(info, str):
        raise _bad("info must be a comma-separated string")
    return _split_info(info)


def _event(obj: Mapping[str, Any], app: App, *, in_batch: bool) -> TriggerEvent:
    return TriggerEvent(
        name=_event_name(obj, app),
        channels=_event_channels(obj, app, in_batch=in_batch),
        data=_event_data(obj, app),
        socket_id=_event_socket_id(obj),
        info=_event_info(obj),
    )


def parse_trigger(body: bytes, app: App) -> TriggerEvent:
    """The body of ``POST /apps/{id}/events`` (http-api.md §3).

    ``null`` values count as absent. ``channels`` takes precedence over ``channel``.

    Raises:
        ApiError: 400 for any invalid field, 413 when ``data`` exceeds the app's limit.
    """
    return _event(_load_object(body), app, in_batch=False)


def trigger_event(
    app: App,
    *,
    name: str,
    channels: Sequence[str],
    data: str,
    socket_id: str | None = None,
    info: Iterable[str] = (),
) -> TriggerEvent:
    """The same rules as :func:`parse_trigger`, for callers that hold values, not a body
    (the in-process API, the console): one validation for every way in.

    Raises:
        ApiError: 400 for any invalid field, 413 when ``data`` exceeds the app's limit.
    """
    fields = {
        "name": name,
        "channels": list(channels),
        "data": data,
        "socket_id": socket_id,
        "info": ",".join(info) or None,
    }
    return _event(fields, app, in_batch=False)


def parse_batch(body: bytes, app: App) -> tuple[TriggerEvent, ...]:
    """The body of ``POST /apps/{id}/batch_events`` (http-api.md §4): see :func:`batch_events`.

    Raises:
        ApiError: 400 for invalid JSON, any invalid event or batch size; 413 for an oversized
            ``data``.
    """
    return batch_events(_load_object(body).get("batch"), app)


def batch_events(batch: object, app: App) -> tuple[TriggerEvent, ...]:
    """A batch as values: a list of event objects (``name``, ``channel``, ``data``, optional
    ``socket_id`` and ``info``), the same rules for the HTTP body and in-process callers.

    Every event is validated before anything is returned, so one bad event rejects the whole
    batch; the error message names its index.

    Raises:
        ApiError: 400 for any invalid event or batch size, 413 for an oversized ``data``.
    """
    if not isinstance(batch, list | tuple):
        raise _bad("batch must be an array of events")
    if not 0 < len(batch) <= app.max_event_batch_size:
        raise _bad(f"batch must hold 1 to {app.max_event_batch_size} events, got {len(batch)}")
    events = []
    for index, obj in enumerate(batch):
        try:
            if not isinstance(obj, Mapping):
                raise _bad("event must be a JSON object")
            events.append(_event(obj, app, in_batch=True))
        except ApiError as error:
            raise ApiError(error.status, f"batch[{index}]: {error.message}") from None
    return tuple(events)


# --------------------------------------------------------------------------------------------
# Queries (http-api.md §5-6, §8)


def _query_info(query: Mapping[str, str]) -> frozenset[str]:
    raw = query.get("info")
    return _split_info(raw) if raw else frozenset()


def _unavailable(attribute: str, why: str) -> ApiError:
    return _bad(f"Attribute {_quote(attribute)} is not available {why}")


def parse_channels_query(query: Mapping[str, str]) -> ChannelsQuery:
    """``filter_by_prefix`` and ``info`` of ``GET /apps/{id}/channels`` (http-api.md §5.1).

    Raises:
        ApiError: 400 for ``user_count`` without a ``presence-`` prefix filter, or an unknown
            attribute.
    """
    prefix = query.get("filter_by_prefix") or ""
    info = _query_info(query)
    for attribute in sorted(info):
        if attribute == USER_COUNT:
            if not prefix.startswith("presence-"):
                raise _unavailable(attribute, "unless filter_by_prefix starts with 'presence-'")
        elif attribute != SUBSCRIPTION_COUNT:
            raise _bad(f"Unknown info attribute: {_quote(attribute)}")
    return ChannelsQuery(prefix=prefix, info=info)


def parse_channel_query(channel: str, query: Mapping[str, str], app: App) -> ChannelQuery:
    """The decoded ``{channel_name}`` and ``info`` of ``GET /apps/{id}/channels/{name}`` (§5.2).

    Raises:
        ApiError: 400 for an invalid name, an unknown attribute, or one that does not apply to
            the channel's type (``user_count``: presence only; ``cache``: cache channels only).
    """
    name = _check_channel_name(channel, app)
    kind = channel_type(name)
    info = _query_info(query)
    for attribute in sorted(info):
        if attribute == USER_COUNT:
            if not kind.is_presence:
                raise _unavailable(attribute, "for non-presence channels")
        elif attribute == CACHE:
            if not kind.cache:
                raise _unavailable(attribute, "for channels without a cache- prefix")
        elif attribute != SUBSCRIPTION_COUNT:
            raise _bad(f"Unknown info attribute: {_quote(attribute)}")
    return ChannelQuery(channel=name, info=info)


def parse_users_channel(channel: str, app: App) -> str:
    """The decoded ``{channel_name}`` of ``GET /apps/{id}/channels/{name}/users`` (§6).

    Raises:
        ApiError: 400 unless it is a valid presence channel name.
    """
    name = _check_channel_name(channel, app)
    if not channel_type(name).is_presence:
        raise _bad("Users can only be listed for presence channels")
    return name


def parse_user_id(user_id: str) -> str:
    """The decoded ``{user_id}`` of ``.../users/{user_id}/terminate_connections`` (§8).

    Raises:
        ApiError: 400 unless it is a valid user id (users.md §2).
    """
    if not is_valid_user_id(user_id):
        raise _bad(f"Invalid user id: {_quote(user_id)}")
    return user_id
