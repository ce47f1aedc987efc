"""Session: feed frames and times, assert the commands (no event loop, no sockets)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from kanal.config import App
from kanal.protocol.channels import ChannelKind
from kanal.protocol.session import (
    Close,
    Command,
    Join,
    Leave,
    Probe,
    Relay,
    Send,
    Session,
    SignIn,
)
from kanal.protocol.signatures import sign_channel, sign_signin
from tests.fuzzing import fuzz_target

KEY, SECRET, SOCKET = "278d425bdf160c739803", "7ad3773142a6692b25b8", "1234.1234"


def app(**overrides: Any) -> App:
    fields: dict[str, Any] = {"enable_client_messages": True, **overrides}
    return App(id="3", key=KEY, secret=SECRET, **fields)


def session(**overrides: Any) -> Session:
    return Session(app(**overrides), SOCKET, now=0.0)


def frame(event: str, data: Any = None, **extra: Any) -> str:
    body: dict[str, Any] = {"event": event, **extra}
    if data is not None:
        body["data"] = data
    return json.dumps(body)


def sent(commands: list[Command]) -> list[dict[str, Any]]:
    """What the hub sends, in order: each Send, and the signin_success a SignIn carries."""
    return [
        orjson.loads(c.payload if isinstance(c, Send) else c.reply)
        for c in commands
        if isinstance(c, Send | SignIn)
    ]


def test_established_frame_has_string_data_with_socket_id_and_timeout() -> None:
    message = orjson.loads(session().established().payload)
    assert message["event"] == "pusher:connection_established"
    assert orjson.loads(message["data"]) == {"socket_id": SOCKET, "activity_timeout": 120}


def test_ping_in_every_data_form_gets_pong() -> None:
    for raw in (frame("pusher:ping", {}), frame("pusher:ping", "{}"), frame("pusher:ping")):
        assert sent(session().receive(raw, 1.0)) == [{"event": "pusher:pong", "data": "{}"}]


def test_public_subscribe_joins_without_auth() -> None:
    [command] = session().receive(frame("pusher:subscribe", {"channel": "news"}), 1.0)
    assert isinstance(command, Join)
    assert command.channel == "news" and command.channel_type.kind is ChannelKind.PUBLIC


def test_subscribe_data_as_json_string_is_accepted() -> None:
    [command] = session().receive(frame("pusher:subscribe", '{"channel":"news"}'), 1.0)
    assert isinstance(command, Join)


def test_private_subscribe_with_spec_vector_signature() -> None:
    auth = f"{KEY}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    [command] = session().receive(
        frame("pusher:subscribe", {"channel": "private-foobar", "auth": auth}), 1.0
    )
    assert isinstance(command, Join)


def test_bad_signature_sends_subscription_error_then_pusher_error() -> None:
    auth = f"{KEY}:{'0' * 64}"
    commands = session().receive(
        frame("pusher:subscribe", {"channel": "private-foobar", "auth": auth}), 1.0
    )
    first, second = sent(commands)
    assert first["event"] == "pusher:subscription_error"
    assert orjson.loads(first["data"])["type"] == "AuthError"
    assert second["event"] == "pusher:error" and second["data"]["code"] is None
    assert second["data"]["message"].startswith("Invalid signature: Expected HMAC SHA256")


def test_presence_member_from_python_spaced_channel_data() -> None:
    channel_data = '{"user_id": "10", "user_info": {"name": "Mr. Channels"}}'
    auth = f"{KEY}:96f61cf0b64a80c5cf1852da9dea2998a90fd7fa840c4cc62212573f1c524cdf"
    [command] = session().receive(
        frame(
            "pusher:subscribe",
            {"channel": "presence-foobar", "auth": auth, "channel_data": channel_data},
        ),
        1.0,
    )
    assert isinstance(command, Join) and command.member is not None
    assert command.member.user_id == "10"
    assert command.member.user_info == {"name": "Mr. Channels"}


def test_numeric_user_id_is_normalised_to_string() -> None:
    channel_data = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
    auth = f"{KEY}:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
    [command] = session().receive(
        frame(
            "pusher:subscribe",
            {"channel": "presence-foobar", "auth": auth, "channel_data": channel_data},
        ),
        1.0,
    )
    assert isinstance(command, Join) and command.member is not None
    assert command.member.user_id == "10"


def test_presence_without_channel_data_or_signin_fails() -> None:
    auth = sign_channel(app_key=KEY, app_secret=SECRET, socket_id=SOCKET, channel="presence-x")
    commands = session().receive(
        frame("pusher:subscribe", {"channel": "presence-x", "auth": auth}), 1.0
    )
    assert [m["event"] for m in sent(commands)] == ["pusher:subscription_error", "pusher:error"]


def test_user_info_over_limit_is_refused() -> None:
    channel_data = json.dumps({"user_id": "1", "user_info": {"x": "y" * 2000}})
    auth = sign_channel(
        app_key=KEY,
        app_secret=SECRET,
        socket_id=SOCKET,
        channel="presence-x",
        channel_data=channel_data,
    )
    commands = session().receive(
        frame(
            "pusher:subscribe",
            {"channel": "presence-x", "auth": auth, "channel_data": channel_data},
        ),
        1.0,
    )
    error = sent(commands)[0]
    assert orjson.loads(error["data"])["type"] == "LimitReached"


def test_invalid_and_too_long_channel_names() -> None:
    for name in ("bad name", "", "a" * 165, "#nope"):
        commands = session().receive(frame("pusher:subscribe", {"channel": name}), 1.0)
        assert sent(commands)[-1]["event"] == "pusher:error", name


def test_missing_channel_is_a_pusher_error_not_a_crash() -> None:
    for data in (None, {}, {"channel": 5}, "nonsense"):
        [message] = sent(session().receive(frame("pusher:subscribe", data), 1.0))
        assert message["data"] == {"code": None, "message": "Missing parameter: data.channel"}


def test_unsubscribe_is_a_leave() -> None:
    assert session().receive(frame("pusher:unsubscribe", {"channel": "x"}), 1.0) == [Leave("x")]


def signin(s: Session, user_data: str) -> list[Command]:
    auth = sign_signin(app_key=KEY, app_secret=SECRET, socket_id=SOCKET, user_data=user_data)
    return s.receive(frame("pusher:signin", {"auth": auth, "user_data": user_data}), 1.0)


def test_signin_command_carries_signin_success_with_the_exact_user_data() -> None:
    user_data = '{"id": "12345", "user_info": {"name": "Alice"}}'
    commands = signin(session(), user_data)
    assert sent(commands)[0] == {
        "event": "pusher:signin_success",
        "data": {"user_data": user_data},
    }
    # The hub sends it once the user's events reach the node (users.md §2 step 6).
    assert isinstance(commands[0], SignIn) and commands[0].user.user_id == "12345"


def test_signin_spec_vector() -> None:
    auth = f"{KEY}:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
    commands = session().receive(
        frame("pusher:signin", {"auth": auth, "user_data": '{"id":"12345"}'}), 1.0
    )
    assert sent(commands)[0]["event"] == "pusher:signin_success"


def test_signin_as_another_user_is_refused() -> None:
    s = session()
    signin(s, '{"id":"a"}')
    [message] = sent(signin(s, '{"id":"b"}'))
    assert message["event"] == "pusher:error"


def test_watchlist_truncated_with_4302_after_success() -> None:
    ids = [str(i) for i in range(105)]
    commands = signin(
        session(enable_watchlist_events=True), json.dumps({"id": "u", "watchlist": ids})
    )
    messages = sent(commands)
    assert messages[0]["event"] == "pusher:signin_success"
    assert messages[-1]["data"]["code"] == 4302
    user = next(c for c in commands if isinstance(c, SignIn)).user
    assert len(user.watchlist) == 100


def test_server_to_user_subscribe_requires_matching_signin() -> None:
    s = session()
    commands = s.receive(frame("pusher:subscribe", {"channel": "#server-to-user-u"}), 1.0)
    assert sent(commands)[0]["event"] == "pusher:subscription_error"
    signin(s, '{"id":"u"}')
    [join] = s.receive(frame("pusher:subscribe", {"channel": "#server-to-user-u", "auth": ""}), 2)
    assert isinstance(join, Join) and join.channel_type.is_server_to_user


def client_event(s: Session, channel: str, now: float = 1.0) -> list[Command]:
    return s.receive(frame("client-typing", {"typing": True}, channel=channel), now)


def test_client_event_on_private_is_relayed_as_string_data() -> None:
    [relay] = client_event(session(), "private-chat")
    assert relay == Relay("private-chat", "client-typing", '{"typing":true}')


def test_client_events_refused_on_public_cache_and_encrypted_channels() -> None:
    for channel in ("public", "cache-x", "private-encrypted-x"):
        [message] = sent(client_event(session(), channel))
        assert "only supported on private and presence" in message["data"]["message"]


def test_client_events_refused_when_app_disables_them() -> None:
    [message] = sent(client_event(session(enable_client_messages=False), "private-x"))
    assert "not enabled" in message["data"]["message"]


def test_client_event_rate_limit_is_4301_and_refills() -> None:
    s = session()
    results = [client_event(s, "private-x", now=1.0)[0] for _ in range(11)]
    assert all(isinstance(r, Relay) for r in results[:10])
    rejected = orjson.loads(results[10].payload) if isinstance(results[10], Send) else {}
    assert rejected["data"]["code"] == 4301
    assert isinstance(client_event(s, "private-x", now=1.2)[0], Relay)


def test_client_event_payload_limit() -> None:
    s = session()
    big = s.receive(frame("client-x", "a" * 10241, channel="private-x"), 1.0)
    assert sent(big)[0]["event"] == "pusher:error"


def test_heartbeat_probe_then_4201() -> None:
    s = session(activity_timeout=10, pong_timeout=5)
    assert s.tick(5.0) == []
    assert s.tick(10.0) == [Probe()]
    assert s.tick(12.0) == []
    assert s.tick(15.0) == [Close(4201, "Pong reply not received")]


def test_any_frame_answers_the_probe() -> None:
    s = session(activity_timeout=10, pong_timeout=5)
    assert s.tick(10.0) == [Probe()]
    s.activity(11.0)
    assert s.tick(15.0) == []


def test_authorized_connection_timeout_4009_unless_signed_in() -> None:
    s = session(enable_user_authentication=True, user_authentication_timeout=30)
    assert s.tick(29.0) == []
    assert s.tick(30.0) == [Close(4009, "Connection not authorized within timeout")]
    signed = session(enable_user_authentication=True, user_authentication_timeout=30)
    signin(signed, '{"id":"u"}')
    assert all(not isinstance(c, Close) for c in signed.tick(31.0))


def test_closed_session_ignores_input() -> None:
    s = session()
    s.close()
    assert s.receive(frame("pusher:ping"), 1.0) == [] and s.tick(1e9) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def nest(depth: int) -> Any:
    """A value nested ``depth`` lists deep: orjson reads up to 1024 levels but writes only
    255, so what a client sends deep enough could be read and then not written."""
    value: Any = {"deep": True}
    for _ in range(depth):
        value = [value]
    return value


deep_values = st.integers(0, 600).map(nest)
any_values = json_values | deep_values
events = st.sampled_from(
    [
        "pusher:subscribe",
        "pusher:unsubscribe",
        "pusher:signin",
        "pusher:ping",
        "pusher:pong",
        "client-x",
        "pusher:bogus",
        "other",
    ]
)
# Texts as a socket never delivers them too: lone surrogates, NUL, non-JSON.
raw_texts = st.text(st.characters(codec=None)) | st.binary() | deep_values.map(json.dumps)


@fuzz_target(examples=300)
@given(raw_texts)
@example(json.dumps({"event": "client-x", "channel": "private-a", "data": nest(300)}))
def test_arbitrary_frames_never_raise(raw: bytes | str) -> None:
    for command in session().receive(raw, 1.0):
        assert isinstance(command, Send | Join | Leave | Relay | SignIn | Close)


@fuzz_target(examples=300)
@given(events, any_values, any_values)
def test_malformed_envelopes_only_produce_pusher_replies(
    event: str, data: Any, channel: Any
) -> None:
    raw = json.dumps({"event": event, "data": data, "channel": channel})
    for command in session(enable_watchlist_events=True).receive(raw, 1.0):
        if isinstance(command, Send):
            assert orjson.loads(command.payload)["event"].startswith("pusher")


# --- conversations: many frames to one session over time ----------------------------------------

CHANNELS = [
    *("news", "cache-c", "private-a", "private-cache-c", "private-encrypted-x"),
    *("presence-room", "presence-cache-r", "#server-to-user-u1", "bad name", "", "a" * 200),
]
USER_IDS: list[Any] = ["u1", "u2", "", 5, 5.5, None, "x" * 200]
REPLIES = {"pusher:pong", "pusher:error", "pusher:signin_success", "pusher:subscription_error"}


@dataclass(frozen=True)
class Step:
    """One frame at a time, and what the test knows about it."""

    text: str | bytes
    at: float
    signed_channel: str | None = None  # a subscription to it carries a valid auth
    signed_user: str | None = None  # a signin for this user id carries a valid auth
    client_event: bool = False


def signed(kind: str, valid: bool, **fields: str) -> str:
    if not valid:
        return f"{KEY}:{'0' * 64}"
    if kind == "signin":
        return sign_signin(app_key=KEY, app_secret=SECRET, socket_id=SOCKET, **fields)
    return sign_channel(app_key=KEY, app_secret=SECRET, socket_id=SOCKET, **fields)


@st.composite
def steps(draw: st.DrawFn, at: float) -> Step:
    kind = draw(st.sampled_from(["subscribe", "signin", "client", "other", "raw"]))
    as_string = draw(st.booleans())  # data as a JSON string, as some clients send it

    def envelope(event: str, data: Any, **extra: Any) -> str:
        body = {"event": event, "data": json.dumps(data) if as_string else data, **extra}
        return json.dumps(body)

    if kind == "subscribe":
        channel = draw(st.sampled_from(CHANNELS) | st.text(max_size=12))
        channel_data = None
        if draw(st.booleans()):
            member = {"user_id": draw(st.sampled_from(USER_IDS)), "user_info": draw(any_values)}
            channel_data = json.dumps(member) if draw(st.integers(0, 5)) else "{nope"
        valid = draw(st.booleans())
        auth = signed("channel", valid, channel=channel, **channel_data_field(channel_data))
        data: dict[str, Any] = {"channel": channel, "auth": auth}
        if channel_data is not None:
            data["channel_data"] = channel_data
        text = envelope(draw(st.sampled_from(["pusher:subscribe", "pusher:unsubscribe"])), data)
        return Step(text, at, signed_channel=channel if valid else None)
    if kind == "signin":
        user_id = draw(st.sampled_from(USER_IDS))
        user = {"id": user_id, "user_info": draw(any_values), "watchlist": draw(any_values)}
        user_data = json.dumps(user) if draw(st.integers(0, 5)) else "[]"
        valid = draw(st.booleans())
        auth = signed("signin", valid, user_data=user_data)
        text = envelope("pusher:signin", {"auth": auth, "user_data": user_data})
        return Step(text, at, signed_user=str(user_id) if valid else None)
    if kind == "client":
        event = draw(st.sampled_from(["client-x", "client-", "client-" + "e" * 200]))
        target: str | None = draw(st.sampled_from(CHANNELS) | st.none())
        payload: Any = draw(any_values | st.integers(10_230, 10_250).map(lambda n: "é" * n))
        return Step(envelope(event, payload, channel=target), at, client_event=True)
    if kind == "other":
        return Step(envelope(draw(events), draw(any_values)), at)
    return Step(draw(raw_texts), at)


def channel_data_field(channel_data: str | None) -> dict[str, str]:
    return {} if channel_data is None else {"channel_data": channel_data}


@st.composite
def conversations(draw: st.DrawFn) -> tuple[dict[str, Any], list[Step]]:
    settings = {
        "enable_client_messages": draw(st.booleans()),
        "enable_encrypted_client_messages": draw(st.booleans()),
        "enable_watchlist_events": draw(st.booleans()),
        "max_client_events_per_second": draw(st.sampled_from([0, 1, 10])),
    }
    at, conversation = 1.0, []
    for _ in range(draw(st.integers(1, 12))):
        at += draw(st.sampled_from([0.0, 0.0, 0.01, 0.5, 1.0]))
        conversation.append(draw(steps(at)))
    return settings, conversation


def check_reply(payload: bytes) -> None:
    """Every reply is a Pusher frame the clients know, with its documented shape."""
    reply = orjson.loads(payload)
    assert reply["event"] in REPLIES, reply
    data = reply["data"]
    if reply["event"] == "pusher:error":
        assert isinstance(data["message"], str) and data["code"] in (None, 4301, 4302), data
    elif reply["event"] == "pusher:subscription_error":
        assert set(orjson.loads(data)) == {"type", "error", "status"}, data
        assert isinstance(reply["channel"], str)


def deep_user_info() -> tuple[dict[str, Any], list[Step]]:
    """A presence member whose user_info orjson could read but not write: the TypeError
    escaped Session.receive. Now it is refused as a subscription error (LimitReached)."""
    channel_data = json.dumps({"user_id": "u1", "user_info": nest(300)})
    auth = signed("channel", True, channel="presence-room", channel_data=channel_data)
    data = {"channel": "presence-room", "auth": auth, "channel_data": channel_data}
    text = json.dumps({"event": "pusher:subscribe", "data": data})
    return {"max_client_events_per_second": 10}, [Step(text, 1.0, signed_channel="presence-room")]


@fuzz_target(examples=200)
@given(conversations())
@example(deep_user_info())
def test_conversations_keep_the_rules(conversation: tuple[dict[str, Any], list[Step]]) -> None:
    """A session fed many frames: it never raises; replies are Pusher frames; a private or
    presence channel is joined only with a valid auth, a user signed in only with a valid one
    and never replaced by another; client events are relayed only when the rules allow them,
    never faster than the token bucket (channels.md §8.1)."""
    settings, steps_ = conversation
    s = session(**settings)
    relayed: list[float] = []
    user: str | None = None
    for step in steps_:
        for command in s.receive(step.text, step.at):
            if isinstance(command, Send):
                check_reply(command.payload)
            elif isinstance(command, Join):
                kind = command.channel_type
                if kind.needs_auth:
                    assert command.channel == step.signed_channel, command
                assert (command.member is not None) == kind.is_presence
                if kind.is_server_to_user:
                    assert command.channel == f"#server-to-user-{user}"
            elif isinstance(command, SignIn):
                assert command.user.user_id == step.signed_user
                assert user in (None, command.user.user_id), "signed in as another user"
                user = command.user.user_id
            elif isinstance(command, Relay):
                assert step.client_event and settings.get("enable_client_messages", True)
                assert command.channel.startswith(("private-", "presence-"))
                relayed.append(step.at)
            else:
                assert isinstance(command, Leave), command
    rate = settings.get("max_client_events_per_second", 10)
    if rate:
        for i, first in enumerate(relayed):
            for j in range(i, len(relayed)):
                assert j - i + 1 <= rate + rate * (relayed[j] - first) + 1e-6
    s.close()
    assert s.receive('{"event":"pusher:ping"}', steps_[-1].at) == []
