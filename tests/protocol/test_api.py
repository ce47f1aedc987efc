"""Tests for kanal.protocol.api: HTTP API bodies and queries (http-api.md §3-6, §8)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from unittest import mock

import orjson
import pusher
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanal.config import App
from kanal.protocol.api import (
    ChannelQuery,
    ChannelsQuery,
    TriggerEvent,
    parse_batch,
    parse_channel_query,
    parse_channels_query,
    parse_trigger,
    parse_user_id,
    parse_users_channel,
)
from kanal.protocol.channels import is_valid_channel_name
from kanal.protocol.errors import ApiError

APP = App(id="3", key="278d425bdf160c739803", secret="7ad3773142a6692b25b8")
SMALL = App(
    id="4",
    key="k",
    secret="s",
    max_event_name_length=5,
    max_event_payload_bytes=4,
    max_channels_per_trigger=2,
    max_event_batch_size=2,
    max_channel_name_length=10,
)


def _body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"name": "my-event", "channel": "my-channel", "data": "{}"}
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def _status(call: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    assert "\n" not in info.value.message
    return info.value


# --------------------------------------------------------------------------------------------
# POST /apps/{id}/events: bodies the SDKs send


def test_python_sdk_trigger_body() -> None:
    body = b'{"name": "foo", "channels": ["project-3"], "data": "{\\"some\\": \\"data\\"}"}'
    assert parse_trigger(body, APP) == TriggerEvent(
        name="foo",
        channels=("project-3",),
        data='{"some": "data"}',
        socket_id=None,
        info=frozenset(),
    )


def test_node_sdk_trigger_body() -> None:
    body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
    event = parse_trigger(body, APP)
    assert (event.name, event.channels, event.data) == ("foo", ("project-3",), '{"some":"data"}')


def _sdk_body(build: Callable[[Any], Any]) -> bytes:
    client = pusher.Pusher(app_id=APP.id, key=APP.key, secret=APP.secret)
    with mock.patch("time.time", return_value=1353088179.0):
        body: bytes = build(client._pusher_client).body
    return body


def test_python_sdk_bodies_parse() -> None:
    event = parse_trigger(
        _sdk_body(lambda c: c.trigger.make_request(["a", "b"], "ev", {"x": "\u2603"}, "1.2")), APP
    )
    assert event == TriggerEvent("ev", ("a", "b"), '{"x": "\u2603"}', "1.2", frozenset())
    to_user = parse_trigger(
        _sdk_body(lambda c: c.trigger.make_request(["#server-to-user-42"], "e", "d")), APP
    )
    assert to_user.channels == ("#server-to-user-42",)
    many = parse_trigger(
        _sdk_body(lambda c: c.trigger.make_request([f"c-{i}" for i in range(100)], "e", "d")), APP
    )
    assert len(many.channels) == 100
    batch = parse_batch(
        _sdk_body(
            lambda c: c.trigger_batch.make_request(
                [{"channel": "my-channel", "name": "my-event", "data": {"a": 1}}]
            )
        ),
        APP,
    )
    assert batch == (TriggerEvent("my-event", ("my-channel",), '{"a": 1}', None, frozenset()),)


def test_channel_singular_and_precedence() -> None:
    assert parse_trigger(_body(**_event()), APP).channels == ("my-channel",)
    both = _body(**_event(channels=["a", "b"], channel="c"))
    assert parse_trigger(both, APP).channels == ("a", "b")
    null_channels = _body(**_event(channels=None, channel="c"))
    assert parse_trigger(null_channels, APP).channels == ("c",)


def test_duplicate_channels_are_removed_in_order() -> None:
    body = _body(**_event(channel=..., channels=["b", "a", "b", "c", "a"]))
    assert parse_trigger(body, APP).channels == ("b", "a", "c")
    enc = _body(**_event(channel=..., channels=["private-encrypted-x", "private-encrypted-x"]))
    assert parse_trigger(enc, APP).channels == ("private-encrypted-x",)


def test_optional_fields() -> None:
    body = _body(**_event(socket_id="123.456", info=" user_count , ,subscription_count,bogus"))
    event = parse_trigger(body, APP)
    assert event.socket_id == "123.456"
    assert event.info == frozenset({"user_count", "subscription_count", "bogus"})
    nulls = parse_trigger(_body(**_event(socket_id=None, info=None)), APP)
    assert (nulls.socket_id, nulls.info) == (None, frozenset())


def test_limits_at_the_boundary_are_accepted() -> None:
    event = parse_trigger(_body(**_event(name="n" * 200, data="d" * 10240, channel="c" * 164)), APP)
    assert len(event.data) == 10240
    assert parse_trigger(_body(**_event(name="n" * 5, data="\u00e9\u00e9", channel="c")), SMALL)


def test_utf8_size_is_what_counts() -> None:
    assert parse_trigger(_body(**_event(data="\u00e9" * 5120)), APP)
    assert _status(lambda: parse_trigger(_body(**_event(data="\u00e9" * 5121)), APP)).status == 413


# --------------------------------------------------------------------------------------------
# POST /apps/{id}/events: every rejection (limits.md §4)

TRIGGER_ERRORS: list[tuple[str, bytes, App, int]] = [
    ("empty body", b"", APP, 400),
    ("truncated JSON", b'{"name":', APP, 400),
    ("invalid UTF-8", b'{"name":"\xff"}', APP, 400),
    ("NaN", b"NaN", APP, 400),
    ("array", b"[]", APP, 400),
    ("string", b'"x"', APP, 400),
    ("null", b"null", APP, 400),
    ("missing name", _body(**_event(name=...)), APP, 400),
    ("null name", _body(**_event(name=None)), APP, 400),
    ("numeric name", _body(**_event(name=1)), APP, 400),
    ("empty name", _body(**_event(name="")), APP, 400),
    ("name too long", _body(**_event(name="n" * 201)), APP, 400),
    ("name too long (app limit)", _body(**_event(name="n" * 6)), SMALL, 400),
    ("pusher: name", _body(**_event(name="pusher:subscribe")), APP, 400),
    ("pusher_internal: name", _body(**_event(name="pusher_internal:x")), APP, 400),
    ("missing data", _body(**_event(data=...)), APP, 400),
    ("object data", _body(**_event(data={"a": 1})), APP, 400),
    ("numeric data", _body(**_event(data=1)), APP, 400),
    ("list data", _body(**_event(data=["x"])), APP, 400),
    ("bool data", _body(**_event(data=True)), APP, 400),
    ("data too large", _body(**_event(data="d" * 10241)), APP, 413),
    (
        "data too large (app limit)",
        _body(**_event(name="e", channel="c", data="\u00e9\u00e9\u00e9")),
        SMALL,
        413,
    ),
    ("no channel", _body(**_event(channel=...)), APP, 400),
    ("numeric channel", _body(**_event(channel=5)), APP, 400),
    ("channels not a list", _body(**_event(channels="a")), APP, 400),
    ("channels object", _body(**_event(channels={"a": 1})), APP, 400),
    ("channels empty", _body(**_event(channels=[])), APP, 400),
    ("101 channels", _body(**_event(channels=[f"c{i}" for i in range(101)])), APP, 400),
    ("3 channels (app limit)", _body(**_event(channels=["a", "b", "c"])), SMALL, 400),
    ("101 duplicates", _body(**_event(channels=["a"] * 101)), APP, 400),
    ("channel not a string", _body(**_event(channels=["a", 1])), APP, 400),
    ("channel with space", _body(**_event(channel="bad name")), APP, 400),
    ("channel too long", _body(**_event(channel="c" * 165)), APP, 400),
    ("channel too long (app limit)", _body(**_event(channel="c" * 11)), SMALL, 400),
    ("empty channel", _body(**_event(channel="")), APP, 400),
    ("bare #", _body(**_event(channel="#foo")), APP, 400),
    ("bad server-to-user", _body(**_event(channel="#server-to-user-")), APP, 400),
    (
        "encrypted among many",
        _body(**_event(channels=["private-encrypted-a", "public"])),
        APP,
        400,
    ),
    (
        "two encrypted",
        _body(**_event(channels=["private-encrypted-a", "private-encrypted-cache-b"])),
        APP,
        400,
    ),
    ("socket_id letters", _body(**_event(socket_id="abc")), APP, 400),
    ("socket_id no fraction", _body(**_event(socket_id="1.")), APP, 400),
    ("socket_id three parts", _body(**_event(socket_id="1.2.3")), APP, 400),
    ("socket_id empty", _body(**_event(socket_id="")), APP, 400),
    ("socket_id number", _body(**_event(socket_id=1.2)), APP, 400),
    ("socket_id arabic digits", _body(**_event(socket_id="\u0661.\u0662")), APP, 400),
    ("socket_id newline", _body(**_event(socket_id="1.2\n")), APP, 400),
    ("info list", _body(**_event(info=["user_count"])), APP, 400),
]


@pytest.mark.parametrize(
    ("body", "app", "status"), [c[1:] for c in TRIGGER_ERRORS], ids=[c[0] for c in TRIGGER_ERRORS]
)
def test_trigger_rejections(body: bytes, app: App, status: int) -> None:
    assert _status(lambda: parse_trigger(body, app)).status == status


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "Invalid JSON"),
        (_body(**_event(data={"a": 1})), "data must be a string"),
        (_body(**_event(channel="bad name")), "Invalid channel name: 'bad name'"),
        (_body(**_event(data="d" * 10241)), "Event data too large: 10241 bytes (limit 10240)"),
        (
            _body(**_event(name="pusher:x")),
            "Event name 'pusher:x' uses a reserved prefix (pusher: or pusher_internal:)",
        ),
    ],
)
def test_trigger_messages(body: bytes, message: str) -> None:
    assert _status(lambda: parse_trigger(body, APP)).message == message


# --------------------------------------------------------------------------------------------
# POST /apps/{id}/batch_events


def _batch(*events: Any, **extra: Any) -> bytes:
    return json.dumps({"batch": list(events), **extra}).encode()


def test_batch_preserves_order_and_fields() -> None:
    events = parse_batch(
        _batch(
            _event(name="a", channel="x", socket_id="1.1", info="subscription_count"),
            _event(name="b", channel="presence-y"),
        ),
        APP,
    )
    assert [e.name for e in events] == ["a", "b"]
    assert events[0] == TriggerEvent("a", ("x",), "{}", "1.1", frozenset({"subscription_count"}))
    assert events[1].channels == ("presence-y",)


def test_batch_of_ten_is_accepted() -> None:
    assert len(parse_batch(_batch(*[_event(name=f"e{i}") for i in range(10)]), APP)) == 10


BATCH_ERRORS: list[tuple[str, bytes, App, int]] = [
    ("invalid JSON", b"{", APP, 400),
    ("not an object", b"[]", APP, 400),
    ("no batch", b"{}", APP, 400),
    ("batch null", b'{"batch": null}', APP, 400),
    ("batch object", b'{"batch": {}}', APP, 400),
    ("empty batch", _batch(), APP, 400),
    ("11 events", _batch(*[_event()] * 11), APP, 400),
    ("3 events (app limit)", _batch(*[_event(data="")] * 3), SMALL, 400),
    ("event not an object", _batch(_event(), "x"), APP, 400),
    ("event with channels", _batch(_event(channel=..., channels=["a"])), APP, 400),
    ("event with channels and channel", _batch(_event(channels=["a"])), APP, 400),
    ("event with null channels", _batch(_event(channels=None)), APP, 400),
    ("event without channel", _batch(_event(channel=...)), APP, 400),
    ("event channel list", _batch(_event(channel=["a"])), APP, 400),
    ("event invalid channel", _batch(_event(channel="a:b")), APP, 400),
    ("event missing name", _batch(_event(name=...)), APP, 400),
    ("event reserved name", _batch(_event(name="pusher:x")), APP, 400),
    ("event data object", _batch(_event(data={})), APP, 400),
    ("event data too large", _batch(_event(), _event(data="x" * 10241)), APP, 413),
    ("event bad socket_id", _batch(_event(socket_id="x")), APP, 400),
]


@pytest.mark.parametrize(
    ("body", "app", "status"), [c[1:] for c in BATCH_ERRORS], ids=[c[0] for c in BATCH_ERRORS]
)
def test_batch_rejections(body: bytes, app: App, status: int) -> None:
    assert _status(lambda: parse_batch(body, app)).status == status


@pytest.mark.parametrize("bad_index", [0, 1, 2])
def test_batch_is_validated_as_a_whole(bad_index: int) -> None:
    """One bad event rejects the request, wherever it is (http-api.md §4)."""
    events = [_event(name=f"e{i}") for i in range(3)]
    events[bad_index] = _event(channel="not valid")
    error = _status(lambda: parse_batch(_batch(*events), APP))
    assert error.status == 400
    assert error.message == f"batch[{bad_index}]: Invalid channel name: 'not valid'"


def test_batch_reports_first_invalid_event() -> None:
    body = _batch(_event(), _event(data="x" * 10241), _event(name=""))
    error = _status(lambda: parse_batch(body, APP))
    assert (error.status, error.message.split(":")[0]) == (413, "batch[1]")


# --------------------------------------------------------------------------------------------
# GET /apps/{id}/channels


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ChannelsQuery("", frozenset())),
        ({"filter_by_prefix": "private-"}, ChannelsQuery("private-", frozenset())),
        ({"info": ""}, ChannelsQuery("", frozenset())),
        (
            {"filter_by_prefix": "presence-", "info": "user_count"},
            ChannelsQuery("presence-", frozenset({"user_count"})),
        ),
        (
            {"filter_by_prefix": "presence-cache-", "info": "user_count,subscription_count"},
            ChannelsQuery("presence-cache-", frozenset({"user_count", "subscription_count"})),
        ),
        ({"info": "subscription_count"}, ChannelsQuery("", frozenset({"subscription_count"}))),
        (
            {"info": "subscription_count,", "x": "y"},
            ChannelsQuery("", frozenset({"subscription_count"})),
        ),
    ],
)
def test_channels_query(query: dict[str, str], expected: ChannelsQuery) -> None:
    assert parse_channels_query(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"info": "user_count"},
        {"info": "user_count", "filter_by_prefix": "private-"},
        {"info": "user_count", "filter_by_prefix": "presenc"},
        {"info": "cache"},
        {"info": "subscription_count,occupied"},
        {"info": "User_Count", "filter_by_prefix": "presence-"},
    ],
)
def test_channels_query_rejections(query: dict[str, str]) -> None:
    assert _status(lambda: parse_channels_query(query)).status == 400


# --------------------------------------------------------------------------------------------
# GET /apps/{id}/channels/{name} and /users


@pytest.mark.parametrize(
    ("channel", "info"),
    [
        ("my-channel", ""),
        ("my-channel", "subscription_count"),
        ("presence-room", "user_count,subscription_count"),
        ("presence-cache-room", "user_count,cache"),
        ("cache-prices", "cache,subscription_count"),
        ("private-cache-x", "cache"),
        ("private-encrypted-cache-x", "cache"),
        ("private-x", " subscription_count "),
    ],
)
def test_channel_query(channel: str, info: str) -> None:
    expected = frozenset(p.strip() for p in info.split(",") if p.strip())
    assert parse_channel_query(channel, {"info": info}, APP) == ChannelQuery(channel, expected)


@pytest.mark.parametrize(
    ("channel", "info"),
    [
        ("bad name", ""),
        ("", ""),
        ("c" * 165, ""),
        ("my-channel", "user_count"),
        ("private-x", "user_count"),
        ("cache-x", "user_count"),
        ("my-channel", "cache"),
        ("presence-x", "cache"),
        ("private-encrypted-x", "cache"),
        ("presence-x", "occupied"),
        ("presence-x", "members"),
    ],
)
def test_channel_query_rejections(channel: str, info: str) -> None:
    assert _status(lambda: parse_channel_query(channel, {"info": info}, APP)).status == 400


@pytest.mark.parametrize("channel", ["presence-room", "presence-cache-room"])
def test_users_channel(channel: str) -> None:
    assert parse_users_channel(channel, APP) == channel


@pytest.mark.parametrize("channel", ["room", "private-room", "cache-room", "presence room", ""])
def test_users_channel_rejections(channel: str) -> None:
    assert _status(lambda: parse_users_channel(channel, APP)).status == 400


# --------------------------------------------------------------------------------------------
# POST .../users/{user_id}/terminate_connections


@pytest.mark.parametrize("user_id", ["12345", "a@b.c", "x" * 200, "user_1=2;3,4-5"])
def test_user_id(user_id: str) -> None:
    assert parse_user_id(user_id) == user_id


@pytest.mark.parametrize("user_id", ["", "a b", "x" * 201, "a/b", "#1", "\u00e9"])
def test_user_id_rejections(user_id: str) -> None:
    assert _status(lambda: parse_user_id(user_id)).status == 400


# --------------------------------------------------------------------------------------------
# Properties: any input yields a value or an ApiError, never another exception

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_values = _json | st.sampled_from(
    ["e", "my-channel", "presence-x", "private-encrypted-x", "1.2", "pusher:x", "user_count", ""]
)
_event_objects = st.dictionaries(
    st.sampled_from(["name", "data", "channel", "channels", "socket_id", "info", "x"]),
    _field_values | st.lists(_field_values, max_size=3),
    max_size=7,
)
_bodies = st.one_of(
    st.binary(max_size=80),
    _json.map(orjson.dumps),
    _event_objects.map(orjson.dumps),
    st.lists(_event_objects | _json, max_size=4).map(lambda b: orjson.dumps({"batch": b})),
)
_apps = st.sampled_from([APP, SMALL])


def _check_event(event: TriggerEvent, app: App) -> None:
    assert event.channels
    assert len(set(event.channels)) == len(event.channels) <= app.max_channels_per_trigger
    assert all(is_valid_channel_name(c, app.max_channel_name_length) for c in event.channels)
    assert 0 < len(event.name) <= app.max_event_name_length
    assert not event.name.startswith(("pusher:", "pusher_internal:"))
    assert len(event.data.encode()) <= app.max_event_payload_bytes


@given(_bodies, _apps)
def test_parse_trigger_total(body: bytes, app: App) -> None:
    try:
        event = parse_trigger(body, app)
    except ApiError as error:
        assert error.status in (400, 413)
        assert "\n" not in error.message
    else:
        _check_event(event, app)


@given(_bodies, _apps)
def test_parse_batch_total(body: bytes, app: App) -> None:
    try:
        events = parse_batch(body, app)
    except ApiError as error:
        assert error.status in (400, 413)
        assert "\n" not in error.message
    else:
        assert 0 < len(events) <= app.max_event_batch_size
        for event in events:
            assert len(event.channels) == 1
            _check_event(event, app)


_queries = st.dictionaries(
    st.sampled_from(["info", "filter_by_prefix", "x"]) | st.text(max_size=5),
    st.text(max_size=30)
    | st.sampled_from(
        ["presence-", "user_count", "subscription_count", "cache", "user_count,cache"]
    ),
    max_size=3,
)
_channel_names = st.text(max_size=30) | st.sampled_from(
    ["presence-a", "cache-a", "private-a", "presence-cache-a", "#server-to-user-1"]
)


@given(_queries, _channel_names)
def test_query_parsers_total(query: dict[str, str], channel: str) -> None:
    for call in (
        lambda: parse_channels_query(query),
        lambda: parse_channel_query(channel, query, APP),
        lambda: parse_users_channel(channel, APP),
        lambda: parse_user_id(channel),
    ):
        try:
            call()
        except ApiError as error:
            assert error.status == 400
            assert "\n" not in error.message


_valid_channels = st.from_regex(r"[-a-zA-Z0-9_=@,.;]{1,164}", fullmatch=True) | st.from_regex(
    r"#server-to-user-[-a-zA-Z0-9_=@,.;]{1,140}", fullmatch=True
)
_valid_events = st.fixed_dictionaries(
    {
        "name": st.text(min_size=1, max_size=200).filter(
            lambda n: not n.startswith(("pusher:", "pusher_internal:"))
        ),
        "data": st.text(max_size=2000),
    },
    optional={
        "socket_id": st.from_regex(r"[0-9]{1,10}\.[0-9]{1,10}", fullmatch=True),
        "info": st.text(max_size=40),
    },
)


@given(_valid_events, st.lists(_valid_channels, min_size=1, max_size=100), st.booleans())
def test_valid_triggers_are_accepted(
    event: dict[str, Any], channels: list[str], single: bool
) -> None:
    channels = [c for c in channels if not c.startswith("private-encrypted-")] or ["c"]
    fields = {**event, "channel": channels[0]} if single else {**event, "channels": channels}
    parsed = parse_trigger(json.dumps(fields).encode(), APP)
    assert parsed.name == event["name"]
    assert parsed.data == event["data"]
    assert parsed.channels == tuple(dict.fromkeys(channels[:1] if single else channels))
    assert parsed.socket_id == event.get("socket_id")
    assert parsed.info == frozenset(
        p.strip() for p in event.get("info", "").split(",") if p.strip()
    )


@given(st.lists(st.tuples(_valid_events, _valid_channels), min_size=1, max_size=10))
def test_valid_batches_are_accepted(events: list[tuple[dict[str, Any], str]]) -> None:
    body = orjson.dumps({"batch": [{**event, "channel": channel} for event, channel in events]})
    parsed = parse_batch(body, APP)
    assert [(e.name, e.data, e.channels) for e in parsed] == [
        (event["name"], event["data"], (channel,)) for event, channel in events
    ]
