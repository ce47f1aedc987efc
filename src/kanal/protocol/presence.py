"""Pure presence rules: member records and their limits (channels.md §4), and how a node's
announced member list is reconciled with the cluster's.

A presence channel holds connections, each carrying one :class:`Member` taken at subscription
time. Whether ``member_added`` / ``member_removed`` is due is decided by the cluster-wide
"first/last connection of this user" answer from the membership store; this module turns the
signed ``channel_data`` (or the signed-in user) into a validated member.

The *announced* roster of a channel on a node (user_id -> user_info) is what every local
subscriber of it has been told: its ``subscription_succeeded`` roster plus the member events
it received since. :func:`joiner_roster` and :func:`reconcile` compare it with the store's
roster; both take the user ids ``touched`` (announced, or announced as gone, by a member
event that arrived while the store was being read): the order of a store read and of
pub/sub deliveries is unknown, so for those users the event stream, which carries every
change in order, is trusted over the read.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import orjson

from kanal.config import App
from kanal.protocol.errors import SubscriptionError

__all__ = [
    "Member",
    "Reconciliation",
    "joiner_roster",
    "member_from_channel_data",
    "member_from_user",
    "normalise_user_id",
    "reconcile",
]


@dataclass(frozen=True, slots=True)
class Member:
    """One connection's presence identity; ``user_info`` is any JSON value (or ``None``)."""

    user_id: str
    user_info: Any = None


def normalise_user_id(value: object) -> str | None:
    """channels.md §4.1: a numeric ``user_id`` becomes its decimal string (``10`` -> ``"10"``)."""
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
    """channels.md §4.6: user_id length and the compact-JSON size of user_info."""
    if len(member.user_id) > app.max_presence_user_id_length:
        raise SubscriptionError(
            channel,
            "LimitReached",
            400,
            f"Presence user_id is longer than {app.max_presence_user_id_length} characters",
        )
    try:
        size = len(orjson.dumps(member.user_info))
    except orjson.JSONEncodeError:  # read from JSON, but too deep to write (over 255 levels)
        raise SubscriptionError(
            channel, "LimitReached", 400, "Presence user_info is nested too deeply"
        ) from None
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
    """Build the member from the authorized ``channel_data`` text (channels.md §3.2).

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


# --- the announced roster against the store's --------------------------------------------


def joiner_roster(
    announced: Mapping[str, Any], stored: Mapping[str, Any], own: str, touched: Set[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The roster to send a joining connection, and the members the channel's other local
    subscribers must be told about first so that they all hold that same roster.

    ``stored`` is the store's roster answered with the join. A stored user nobody here was
    told about yet has a ``member_added`` in flight (or lost in an outage): the others get it
    now and the late copy is dropped as a duplicate. An announced user missing from the
    store has a ``member_removed`` in flight (or, while the store answers from this node's
    local mirror, lives on another node): the joiner is shown it too, so the removal, when
    it comes, applies to everyone alike. The joiner's own user is always in.
    """
    roster: dict[str, Any] = {}
    for user_id, user_info in stored.items():
        if user_id in touched and user_id != own and user_id not in announced:
            continue  # announced as gone while the store answered: the event is newer
        roster[user_id] = user_info
    for user_id, user_info in announced.items():
        roster.setdefault(user_id, user_info)
    added = {user_id: info for user_id, info in roster.items() if user_id not in announced}
    return roster, added


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What a node sends its local subscribers of one channel after comparing rosters.

    ``absent`` counts, per announced user missing from the store, the consecutive
    comparisons it was missing in; it is the next call's ``absent``.
    """

    added: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    absent: dict[str, int] = field(default_factory=dict)


def reconcile(
    announced: Mapping[str, Any],
    stored: Mapping[str, Any],
    touched: Set[str],
    absent: Mapping[str, int],
    confirmations: int,
) -> Reconciliation:
    """Member events that make ``announced`` equal the store's roster ``stored``.

    A stored user that was never announced is added at once: it is in the store, so it is
    really there (a ``member_added`` still in flight is then dropped as a duplicate). An
    announced user missing from the store is removed only once it was missing in
    ``confirmations`` consecutive comparisons: after Redis comes back empty, every node puts
    its own members back at its own next maintenance round, so a single look can miss
    members that are still there. Users in ``touched`` are left to the event stream, and
    their count starts again.
    """
    added = {
        user_id: user_info
        for user_id, user_info in stored.items()
        if user_id not in announced and user_id not in touched
    }
    removed: list[str] = []
    missing: dict[str, int] = {}
    for user_id in announced:
        if user_id in stored or user_id in touched:
            continue
        seen = absent.get(user_id, 0) + 1
        if seen >= confirmations:
            removed.append(user_id)
        else:
            missing[user_id] = seen
    return Reconciliation(added, removed, missing)
