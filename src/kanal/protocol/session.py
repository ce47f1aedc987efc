"""Session: one WebSocket connection's protocol state machine (protocol.md §3).

Ownership rule: this module owns everything that belongs to a single connection and needs no
knowledge of other connections: its socket_id and app, the signed-in user, the client-event
rate bucket, and the heartbeat / authorized-connection deadlines. Channel membership is NOT
here: :mod:`kanal.hub` owns it (the only owner of membership on a node).

``receive(text, now)`` and ``tick(now)`` return :data:`Command` values for the hub to carry
out; they never raise. A :class:`PusherError` raised while handling a frame becomes a
``pusher:error`` reply (or ``pusher:subscription_error`` + ``pusher:error`` for a failed
subscription, channels.md §3.4); it never closes the connection (protocol.md §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from kanal.config import App
from kanal.protocol import events
from kanal.protocol.channels import (
    ChannelType,
    channel_type,
    is_valid_channel_name,
    is_valid_user_id,
)
from kanal.protocol.errors import CloseCode, PusherError, SubscriptionError
from kanal.protocol.presence import Member, member_from_channel_data, member_from_user
from kanal.protocol.signatures import accepted_secrets, verify_channel_auth, verify_signin

__all__ = [
    "Close",
    "Command",
    "Join",
    "Leave",
    "Probe",
    "Refusal",
    "Relay",
    "Send",
    "Session",
    "SignIn",
    "SignedInUser",
    "State",
]


@dataclass(frozen=True, slots=True)
class SignedInUser:
    """The user record of a signed-in connection (users.md §1)."""

    user_id: str
    user_info: Any
    watchlist: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a frame was refused, for the console's log (``channel`` None: not a subscription;
    ``code``: the ``pusher:error`` code, or the ``pusher:subscription_error`` status)."""

    channel: str | None
    code: int | None
    message: str


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``payload`` (one JSON text frame) to this connection only; ``refusal`` says why,
    when it is an error reply."""

    payload: bytes
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class Join:
    """Subscribe this connection to ``channel``; authorization has passed."""

    channel: str
    channel_type: ChannelType
    member: Member | None


@dataclass(frozen=True, slots=True)
class Leave:
    """Unsubscribe this connection from ``channel`` (no reply, protocol.md §7.3)."""

    channel: str


@dataclass(frozen=True, slots=True)
class Relay:
    """Relay a client event; the hub checks the connection is subscribed (channels.md §8)."""

    channel: str
    event: str
    data: str


@dataclass(frozen=True, slots=True)
class SignIn:
    """The connection signed in as ``user`` (users.md §2 step 6); ``reply`` is the
    ``pusher:signin_success`` frame, sent once the user's events reach the node."""

    user: SignedInUser
    reply: bytes


@dataclass(frozen=True, slots=True)
class Probe:
    """Liveness probe: a WebSocket Ping control frame plus ``pusher:ping`` (protocol.md §5.2)."""


@dataclass(frozen=True, slots=True)
class Close:
    """Send ``pusher:error`` with ``code`` and ``reason``, then close with ``code``."""

    code: int
    reason: str


Command = Send | Join | Leave | Relay | SignIn | Probe | Close


class State(Enum):
    OPEN = "open"
    CLOSED = "closed"


class Session:
    """Protocol state of one connection. Time is always passed in (seconds, monotonic).

    Args:
        app: the application the connection belongs to.
        socket_id: the connection's id (``^\\d+\\.\\d+$``, protocol.md §1.3).
        now: the time the connection was established.
    """

    def __init__(self, app: App, socket_id: str, now: float) -> None:
        self.app = app
        self.socket_id = socket_id
        self.user: SignedInUser | None = None
        self.state = State.OPEN
        self._last_activity = now
        self._probe_deadline: float | None = None
        # users.md §6: only apps with authorized connections on get a deadline.
        self._auth_deadline: float | None = (
            now + app.user_authentication_timeout if app.enable_user_authentication else None
        )
        self._tokens = float(app.max_client_events_per_second)
        self._tokens_at = now

    def reconfigure(self, app: App) -> None:
        """A reload changed this connection's app (the same id): its secrets, switches and
        limits hold from the next frame on, so a secret rotation reaches open connections too
        (docs/apps.md). What was settled when the connection opened stays: the sign-in
        deadline and the client's own ``activity_timeout``, though the server's pings follow
        the new one."""
        self.app = app

    def established(self) -> Send:
        """The first frame: ``pusher:connection_established`` (protocol.md §4.1)."""
        return Send(events.connection_established_frame(self.socket_id, self.app.activity_timeout))

    def activity(self, now: float) -> None:
        """Every inbound frame, Ping and Pong included, is proof of life (protocol.md §5.2)."""
        self._last_activity = now
        self._probe_deadline = None

    def close(self) -> None:
        self.state = State.CLOSED

    def tick(self, now: float) -> list[Command]:
        """Heartbeat and authorized-connection deadlines (protocol.md §5.2, users.md §6)."""
        if self.state is not State.OPEN:
            return []
        if self._auth_deadline is not None and now >= self._auth_deadline:
            return [Close(CloseCode.UNAUTHORIZED, "Connection not authorized within timeout")]
        if self._probe_deadline is not None:
            if now >= self._probe_deadline:
                return [Close(CloseCode.PONG_TIMEOUT, "Pong reply not received")]
            return []
        if now - self._last_activity >= self.app.activity_timeout:
            self._probe_deadline = now + self.app.pong_timeout
            return [Probe()]
        return []

    def receive(self, text: str | bytes, now: float, wall: float | None = None) -> list[Command]:
        """Handle one inbound text frame; never raises.

        ``now`` is the session's (monotonic) clock; ``wall`` the Unix time, which decides
        whether a rotating app's previous secret still signs (:func:`accepted_secrets`;
        ``None``: only the current secret does).
        """
        if self.state is not State.OPEN:
            return []
        self.activity(now)
        try:
            return self._dispatch(events.parse_client_message(text), now, wall)
        except SubscriptionError as error:
            return [
                Send(
                    events.subscription_error_frame(
                        error.channel, error.kind, error.message, error.status
                    ),
                    Refusal(error.channel, error.status, error.message),
                ),
                Send(events.error_frame(None, error.message)),
            ]
        except PusherError as error:
            refusal = Refusal(None, error.code, error.message)
            return [Send(events.error_frame(error.code, error.message), refusal)]

    def _dispatch(
        self, message: events.ClientMessage, now: float, wall: float | None
    ) -> list[Command]:
        if isinstance(message, events.Ping):
            return [Send(events.pong_frame())]
        if isinstance(message, events.Subscribe):
            return [self._subscribe(message, wall)]
        if isinstance(message, events.Unsubscribe):
            return [Leave(message.channel)]
        if isinstance(message, events.Signin):
            return self._signin(message, wall)
        if isinstance(message, events.ClientEvent):
            return [self._client_event(message, now)]
        return []  # Pong and ignored events: activity already recorded

    def _subscribe(self, message: events.Subscribe, wall: float | None) -> Join:
        """channels.md §3.1-3.2: name rules, then type-specific authorization."""
        channel = message.channel
        if not is_valid_channel_name(channel, self.app.max_channel_name_length):
            raise SubscriptionError(
                channel, "InvalidChannel", 400, f"Invalid channel name: {channel}"
            )
        kind = channel_type(channel)
        if kind.is_server_to_user:
            expected = f"#server-to-user-{self.user.user_id}" if self.user else None
            if channel != expected:
                raise SubscriptionError(
                    channel, "AuthError", 403, "Connection is not signed in as the channel's user"
                )
            return Join(channel, kind, None)
        if not kind.needs_auth:
            return Join(channel, kind, None)
        verify_channel_auth(
            app_key=self.app.key,
            app_secrets=accepted_secrets(self.app, wall),
            socket_id=self.socket_id,
            channel=channel,
            auth=message.auth,
            channel_data=message.channel_data,
        )
        member = self._member(channel, message.channel_data) if kind.is_presence else None
        self._auth_deadline = None  # users.md §6: a private/presence subscription authorizes
        return Join(channel, kind, member)

    def _member(self, channel: str, channel_data: str | None) -> Member:
        if channel_data is not None:
            return member_from_channel_data(channel, channel_data, self.app)
        if self.user is not None:
            return member_from_user(channel, self.user.user_id, self.user.user_info, self.app)
        raise SubscriptionError(
            channel,
            "AuthError",
            403,
            f"{channel} is a presence channel and subscription must include channel_data",
        )

    def _signin(self, message: events.Signin, wall: float | None) -> list[Command]:
        """users.md §2: verify, parse ``user_data``, record, reply ``signin_success``."""
        verify_signin(
            app_key=self.app.key,
            app_secrets=accepted_secrets(self.app, wall),
            socket_id=self.socket_id,
            auth=message.auth,
            user_data=message.user_data,
        )
        user, truncated = self._parse_user(message.user_data)
        if self.user is not None and self.user.user_id != user.user_id:
            raise PusherError(None, "Connection is already signed in as a different user")
        self.user = user
        self._auth_deadline = None
        commands: list[Command] = [SignIn(user, events.signin_success_frame(message.user_data))]
        if truncated:
            limit = self.app.max_watchlist_size
            commands.append(
                Send(
                    events.error_frame(
                        4302,
                        f"Watchlist limit exceeded. Only the first {limit} user IDs are accepted.",
                    )
                )
            )
        return commands

    def _parse_user(self, user_data: str) -> tuple[SignedInUser, bool]:
        try:
            parsed = orjson.loads(user_data)
        except orjson.JSONDecodeError:
            parsed = None
        user_id = parsed.get("id") if isinstance(parsed, dict) else None
        if (
            not isinstance(parsed, dict)
            or not isinstance(user_id, str)
            or not is_valid_user_id(user_id)
        ):
            raise PusherError(
                None, 'Invalid user_data: must be a JSON object with a non-empty string "id"'
            )
        watchlist: tuple[str, ...] = ()
        truncated = False
        raw = parsed.get("watchlist")
        if self.app.enable_watchlist_events and isinstance(raw, list):
            ids = [item for item in raw if isinstance(item, str) and item]
            truncated = len(ids) > self.app.max_watchlist_size
            watchlist = tuple(dict.fromkeys(ids[: self.app.max_watchlist_size]))
        return SignedInUser(user_id, parsed.get("user_info"), watchlist), truncated

    def _client_event(self, message: events.ClientEvent, now: float) -> Relay:
        """channels.md §8.1 rules 1 and 3-6 (the hub checks rule 2, subscription)."""
        app = self.app
        if not app.enable_client_messages:
            raise PusherError(
                None, "Client event rejected - client events are not enabled for this app"
            )
        channel = message.channel
        if channel is None:
            raise PusherError(None, "Client event rejected - missing channel")
        if not channel_type(channel).allows_client_events(app.enable_encrypted_client_messages):
            raise PusherError(
                None, "Client event rejected - only supported on private and presence channels"
            )
        if len(message.event) > app.max_event_name_length:
            raise PusherError(
                None,
                f"Client event rejected - event name longer than {app.max_event_name_length}",
            )
        if len(message.data.encode()) > app.max_event_payload_bytes:
            raise PusherError(
                None,
                f"Client event rejected - payload over {app.max_event_payload_bytes} bytes",
            )
        if not self._take_token(now):
            raise PusherError(4301, "Client event rejected due to rate limit")
        return Relay(channel, message.event, message.data)

    def _take_token(self, now: float) -> bool:
        """Token bucket, capacity and refill = max_client_events_per_second (channels.md §8.1)."""
        rate = float(self.app.max_client_events_per_second)
        if rate <= 0:
            return True
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
