"""Channel-name grammar and channel types (channels.md §1-2).

A channel's type is decided by its prefix alone, testing the longest prefixes first
(channels.md §1: first match wins). Names are validated against the allowed character set and
the app's length limit; ``#`` is only allowed in ``#server-to-user-{user_id}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "SERVER_TO_USER_PREFIX",
    "ChannelKind",
    "ChannelType",
    "channel_type",
    "is_valid_channel_name",
    "is_valid_user_id",
    "server_to_user_channel",
]

SERVER_TO_USER_PREFIX = "#server-to-user-"

# channels.md §2: ASCII letters, digits and _ - = @ , . ;
_NAME_RE = re.compile(r"[-a-zA-Z0-9_=@,.;]+")


class ChannelKind(Enum):
    """The base type of a channel; the ``cache`` property is orthogonal."""

    PUBLIC = "public"
    PRIVATE = "private"
    ENCRYPTED = "private-encrypted"
    PRESENCE = "presence"
    SERVER_TO_USER = "server-to-user"


@dataclass(frozen=True, slots=True)
class ChannelType:
    """What a channel name implies (the table in channels.md §1)."""

    kind: ChannelKind
    cache: bool

    @property
    def needs_auth(self) -> bool:
        """Private, encrypted and presence channels need a signed ``auth`` (auth.md §3.1)."""
        return self.kind in (ChannelKind.PRIVATE, ChannelKind.ENCRYPTED, ChannelKind.PRESENCE)

    @property
    def is_presence(self) -> bool:
        return self.kind is ChannelKind.PRESENCE

    @property
    def is_encrypted(self) -> bool:
        return self.kind is ChannelKind.ENCRYPTED

    @property
    def is_server_to_user(self) -> bool:
        return self.kind is ChannelKind.SERVER_TO_USER

    def allows_client_events(self, allow_encrypted: bool) -> bool:
        """channels.md §8.1 rule 3: private and presence only; encrypted only when enabled."""
        if self.kind is ChannelKind.ENCRYPTED:
            return allow_encrypted
        return self.kind in (ChannelKind.PRIVATE, ChannelKind.PRESENCE)


_PREFIXES: tuple[tuple[str, ChannelType], ...] = (
    (SERVER_TO_USER_PREFIX, ChannelType(ChannelKind.SERVER_TO_USER, cache=False)),
    ("private-encrypted-cache-", ChannelType(ChannelKind.ENCRYPTED, cache=True)),
    ("private-encrypted-", ChannelType(ChannelKind.ENCRYPTED, cache=False)),
    ("private-cache-", ChannelType(ChannelKind.PRIVATE, cache=True)),
    ("private-", ChannelType(ChannelKind.PRIVATE, cache=False)),
    ("presence-cache-", ChannelType(ChannelKind.PRESENCE, cache=True)),
    ("presence-", ChannelType(ChannelKind.PRESENCE, cache=False)),
    ("cache-", ChannelType(ChannelKind.PUBLIC, cache=True)),
)
_PUBLIC = ChannelType(ChannelKind.PUBLIC, cache=False)
#: The first characters of the prefixes: any other name is public without a comparison.
_PREFIX_STARTS = frozenset(prefix[0] for prefix, _ in _PREFIXES)


def channel_type(name: str) -> ChannelType:
    """Classify ``name`` by prefix; anything unprefixed is public."""
    if name[:1] not in _PREFIX_STARTS:
        return _PUBLIC
    for prefix, kind in _PREFIXES:
        if name.startswith(prefix):
            return kind
    return _PUBLIC


def is_valid_user_id(user_id: str, max_length: int = 200) -> bool:
    """A user id uses the channel-name character set (users.md §2, pusher-http-python)."""
    return 0 < len(user_id) <= max_length and _NAME_RE.fullmatch(user_id) is not None


def is_valid_channel_name(name: str, max_length: int) -> bool:
    """channels.md §2: allowed characters, non-empty, at most ``max_length`` characters.

    ``#`` is reserved: the only accepted ``#`` name is ``#server-to-user-{user_id}`` whose
    ``user_id`` uses the same character set.
    """
    if not name or len(name) > max_length:
        return False
    if name.startswith(SERVER_TO_USER_PREFIX):
        return is_valid_user_id(name[len(SERVER_TO_USER_PREFIX) :])
    return _NAME_RE.fullmatch(name) is not None


def server_to_user_channel(user_id: str) -> str:
    """The ``#server-to-user-{user_id}`` channel name (users.md §3)."""
    return SERVER_TO_USER_PREFIX + user_id
