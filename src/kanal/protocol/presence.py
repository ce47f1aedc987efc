"""Pure presence rules: member records and their limits (CHANNELS.md §4).

A presence channel holds connections, each carrying one :class:`Member` taken at subscription
time. Whether ``member_added`` / ``member_removed`` is due is decided by the cluster-wide
"first/last connection of this user" answer from the membership store; this module only
turns the signed ``channel_data`` (or the signed-in user) into a validated member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kanal.config import App
from kanal.protocol.errors import SubscriptionError

__all__ = ["Member", "member_from_channel_data", "member_from_user", "normalise_user_id"]


@dataclass(frozen=True, slots=True)
class Member:
    """One connection's presence identity; ``user_info`` is any JSON value (or ``None``)."""

    user_id: str
    user_info: Any = None


def normalise_user_id(value: object) -> str | None:
    """CHANNELS.md §4.1: a numeric ``user_id`` becomes its decimal string (``10`` -> ``"10"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


def _check_limits(channel: str, member: Member, app: App) -> Member:
    """CHANNELS.md §4.6: user_id length and the compact-JSON size of user_info."""
    if len(member.user_id) > app.max_presence_user_id_length:
        raise SubscriptionError(
            channel,
            "LimitReached",
            400,
            f"Presence user_id is longer than {app.max_presence_user_id_length} characters",
        )
    size = len(orjson.dumps(member.user_info))
    if size > app.max_presence_user_info_bytes:
        raise SubscriptionError(
            channel,
            "LimitReached",
            400,
            f"Presence user_info is {size} bytes, over the limit of "
            f"{app.max_presence_user_info_bytes} bytes",
        )
    return member


def member_from_channel_data(channel: str, channel_data: str, app: App) -> Member:
    """Build the member from the authorized ``channel_data`` text (CHANNELS.md §3.2).

    Raises:
        SubscriptionError: not a JSON object, no usable ``user_id``, or over a limit.
    """
    try:
        parsed = orjson.loads(channel_data)
    except orjson.JSONDecodeError:
        parsed = None
    user_id = normalise_user_id(parsed.get("user_id")) if isinstance(parsed, dict) else None
    if user_id is None or not isinstance(parsed, dict):
        raise SubscriptionError(
            channel,
            "AuthError",
            400,
            "Invalid channel_data: must be a JSON object with a string or numeric user_id",
        )
    return _check_limits(channel, Member(user_id, parsed.get("user_info")), app)


def member_from_user(channel: str, user_id: str, user_info: Any, app: App) -> Member:
    """Presence member for a signed-in connection that sent no ``channel_data`` (§4.5)."""
    return _check_limits(channel, Member(user_id, user_info), app)
