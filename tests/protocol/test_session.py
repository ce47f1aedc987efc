"""Session: feed frames and times, assert the commands (no event loop, no sockets)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given
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
    return [orjson.loads(c.payload) for c in commands if isinstance(c, Send)]


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


def test_signin_success_echoes_exact_user_data_then_signin_command() -> None:
    user_data = '{"id": "12345", "user_info": {"name": "Alice"}}'
    commands = signin(session(), user_data)
    assert sent(commands)[0] == {
        "event": "pusher:signin_success",
        "data": {"user_data": user_data},
    }
    assert isinstance(commands[1], SignIn) and commands[1].user.user_id == "12345"


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


@given(st.binary() | st.text())
def test_arbitrary_frames_never_raise(raw: bytes | str) -> None:
    for command in session().receive(raw, 1.0):
        assert isinstance(command, Send | Join | Leave | Relay | SignIn | Close)


@given(events, json_values, json_values)
def test_malformed_envelopes_only_produce_pusher_replies(
    event: str, data: Any, channel: Any
) -> None:
    raw = json.dumps({"event": event, "data": data, "channel": channel})
    for command in session(enable_watchlist_events=True).receive(raw, 1.0):
        if isinstance(command, Send):
            assert orjson.loads(command.payload)["event"].startswith("pusher")
