"""Tests for kanal.protocol.signatures: spec vectors, SDK cross-checks and properties."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import pusher
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kanal.protocol.errors import ApiError, PusherError, SubscriptionError
from kanal.protocol.signatures import (
    EMPTY_BODY_MD5,
    canonical_query,
    channel_string_to_sign,
    hmac_sha256_hex,
    md5_hex,
    request_string_to_sign,
    sign_channel,
    sign_request,
    sign_signin,
    signin_string_to_sign,
    verify_channel_auth,
    verify_request,
    verify_signin,
    webhook_signature,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "test_vectors.json").read_text("utf-8")
)
APP_ID = VECTORS["credentials"]["app_id"]
KEY = VECTORS["credentials"]["key"]
SECRET = VECTORS["credentials"]["secret"]
SOCKET_ID = "1234.1234"
TS = 1353088179  # auth_timestamp of every HTTP vector (http-api.md §2.6)
RESERVED = {"auth_key", "auth_timestamp", "auth_version", "auth_signature", "body_md5"}


def _ids(section: str) -> list[str]:
    return [v["name"] for v in VECTORS[section]]


def _verify(
    query: list[tuple[str, str]],
    *,
    method: str = "POST",
    path: str = "/apps/3/events",
    body: bytes = b"",
    now: float = TS,
    expose_hint: bool = True,
) -> None:
    verify_request(
        method=method,
        path=path,
        query=query,
        body=body,
        app_key=KEY,
        app_secrets=(SECRET,),
        now=now,
        expose_hint=expose_hint,
    )


def _signed(
    *, method: str = "GET", path: str = "/apps/3/channels", body: bytes = b"", **params: str
) -> list[tuple[str, str]]:
    query = sign_request(
        method=method,
        path=path,
        params=params,
        body=body,
        app_key=KEY,
        app_secret=SECRET,
        timestamp=TS,
    )
    return list(query.items())


def _api_error(call: Callable[[], None]) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    assert info.value.status == 401
    assert "\n" not in info.value.message
    return info.value


# --------------------------------------------------------------------------------------------
# Channel authorization and sign-in (auth.md §5, vectors "auth")


def _auth_vector_parts(vector: dict[str, Any]) -> tuple[str, str | None]:
    """The channel and channel_data of a channel-auth vector."""
    channel = vector["string_to_sign"].split(":", 2)[1]
    return channel, vector.get("channel_data")


@pytest.mark.parametrize("vector", VECTORS["auth"], ids=_ids("auth"))
def test_auth_vector(vector: dict[str, Any]) -> None:
    assert hmac_sha256_hex(SECRET, vector["string_to_sign"]) == vector["signature"]
    if "user_data" in vector:
        user_data = vector["user_data"]
        assert signin_string_to_sign(SOCKET_ID, user_data) == vector["string_to_sign"]
        auth = sign_signin(app_key=KEY, app_secret=SECRET, socket_id=SOCKET_ID, user_data=user_data)
        assert auth == vector["auth"]
        verify_signin(
            app_key=KEY, app_secrets=(SECRET,), socket_id=SOCKET_ID, auth=auth, user_data=user_data
        )
        return
    channel, channel_data = _auth_vector_parts(vector)
    assert channel_string_to_sign(SOCKET_ID, channel, channel_data) == vector["string_to_sign"]
    auth = sign_channel(
        app_key=KEY,
        app_secret=SECRET,
        socket_id=SOCKET_ID,
        channel=channel,
        channel_data=channel_data,
    )
    assert auth == vector["auth"]
    verify_channel_auth(
        app_key=KEY,
        app_secrets=(SECRET,),
        socket_id=SOCKET_ID,
        channel=channel,
        auth=auth,
        channel_data=channel_data,
    )


def _channel_auth(
    auth: str, channel_data: str | None = None, channel: str = "private-foobar"
) -> None:
    verify_channel_auth(
        app_key=KEY,
        app_secrets=(SECRET,),
        socket_id=SOCKET_ID,
        channel=channel,
        auth=auth,
        channel_data=channel_data,
    )


def test_empty_channel_data_is_not_signed() -> None:
    assert channel_string_to_sign("1.2", "private-x", "") == "1.2:private-x"
    assert channel_string_to_sign("1.2", "private-x", None) == "1.2:private-x"
    _channel_auth(VECTORS["auth"][0]["auth"], channel_data="")


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("", "Invalid key in subscription auth data: ''"),
        ("nocolon", "Invalid key in subscription auth data: 'nocolon'"),
        ("otherkey:abc", "Invalid key in subscription auth data: 'otherkey'"),
        (
            f"{KEY}:deadbeef",
            "Invalid signature: Expected HMAC SHA256 hex digest of "
            "1234.1234:private-foobar, but got deadbeef",
        ),
        (
            f"{KEY}:" + VECTORS["auth"][0]["signature"].upper(),
            "Invalid signature: Expected HMAC SHA256 hex digest of 1234.1234:private-foobar, "
            "but got " + VECTORS["auth"][0]["signature"].upper(),
        ),
        (f"{KEY}:\u00e9\ud800", None),
    ],
)
def test_channel_auth_failures(auth: str, message: str | None) -> None:
    with pytest.raises(SubscriptionError) as info:
        _channel_auth(auth)
    error = info.value
    assert (error.channel, error.kind, error.status, error.code) == (
        "private-foobar",
        "AuthError",
        401,
        None,
    )
    if message is not None:
        assert error.message == message


def test_presence_auth_requires_exact_channel_data_bytes() -> None:
    vector = next(v for v in VECTORS["auth"] if v["name"] == "presence-python-spacing")
    compact = json.dumps(json.loads(vector["channel_data"]), separators=(",", ":"))
    with pytest.raises(SubscriptionError, match="Invalid signature"):
        _channel_auth(vector["auth"], channel_data=compact, channel="presence-foobar")
    with pytest.raises(SubscriptionError, match="Invalid signature"):
        _channel_auth(vector["auth"], channel_data=None, channel="presence-foobar")


def _signin(auth: str, user_data: str = '{"id":"12345"}') -> None:
    verify_signin(
        app_key=KEY, app_secrets=(SECRET,), socket_id=SOCKET_ID, auth=auth, user_data=user_data
    )


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("", "Invalid format: auth must have the format key:signature"),
        (KEY, "Invalid format: auth must have the format key:signature"),
        ("other:" + "0" * 64, "Invalid key in signin auth data: 'other'"),
        (
            f"{KEY}::user::4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
            "Invalid signature: Expected HMAC SHA256 hex digest of "
            '1234.1234::user::{"id":"12345"}, but got '
            ":user::4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
        ),
    ],
)
def test_signin_failures(auth: str, message: str) -> None:
    with pytest.raises(PusherError) as info:
        _signin(auth)
    assert info.value.code is None
    assert info.value.message == message
    assert not isinstance(info.value, SubscriptionError)


def test_signin_user_data_is_signed_verbatim() -> None:
    vector = next(v for v in VECTORS["auth"] if v["name"] == "user-authentication")
    _signin(vector["auth"], vector["user_data"])
    with pytest.raises(PusherError, match="Invalid signature"):
        _signin(vector["auth"], '{"id": "12345"}')


# --------------------------------------------------------------------------------------------
# Webhooks (webhooks.md §7)


@pytest.mark.parametrize("vector", VECTORS["webhooks"], ids=_ids("webhooks"))
def test_webhook_vector(vector: dict[str, Any]) -> None:
    body = vector["body"].encode("utf-8")
    assert vector["x_pusher_key"] == KEY
    assert webhook_signature(SECRET, body) == vector["x_pusher_signature"]


def test_webhook_signature_accepted_by_python_sdk() -> None:
    client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
    body = json.dumps({"time_ms": 1327078148132, "events": []}).encode()
    with mock.patch("time.time", return_value=1327078148.132 + 10):
        accepted = client.validate_webhook(KEY, webhook_signature(SECRET, body), body)
    assert accepted == {"time_ms": 1327078148132, "events": []}


# --------------------------------------------------------------------------------------------
# HTTP API: vectors (http-api.md §2.6)


def _vector_request(vector: dict[str, Any]) -> tuple[list[tuple[str, str]], bytes]:
    query = [
        *vector["query_without_signature"].items(),
        ("auth_signature", vector["auth_signature"]),
    ]
    return query, (vector["body"] or "").encode("utf-8")


@pytest.mark.parametrize("vector", VECTORS["http"], ids=_ids("http"))
def test_http_vector(vector: dict[str, Any]) -> None:
    query, body = _vector_request(vector)
    params = vector["query_without_signature"].items()
    assert (
        request_string_to_sign(vector["method"], vector["path"], params) == vector["string_to_sign"]
    )
    if "body_md5" in vector["query_without_signature"]:
        assert md5_hex(body) == vector["query_without_signature"]["body_md5"]
    _verify(query, method=vector["method"], path=vector["path"], body=body)
    _verify(query[::-1], method=vector["method"].lower(), path=vector["path"], body=body)


@pytest.mark.parametrize("vector", VECTORS["http"], ids=_ids("http"))
def test_sign_request_reproduces_vector(vector: dict[str, Any]) -> None:
    given_params = dict(vector["query_without_signature"])
    body = (vector["body"] or "").encode("utf-8")
    extra = {k: v for k, v in given_params.items() if not k.startswith("auth_") and k != "body_md5"}
    if not body and "body_md5" in given_params:
        extra["body_md5"] = given_params["body_md5"]  # pusher-http-python's GET form
    signed = sign_request(
        method=vector["method"],
        path=vector["path"],
        params=extra,
        body=body,
        app_key=KEY,
        app_secret=SECRET,
        timestamp=TS,
    )
    assert signed == {**given_params, "auth_signature": vector["auth_signature"]}
    assert list(signed)[-1] == "auth_signature"


def test_signature_hint_matches_spec_example() -> None:
    vector = VECTORS["http"][0]
    query, body = _vector_request(vector)
    query[-1] = ("auth_signature", "wrong")
    error = _api_error(lambda: _verify(query, body=body))
    assert error.message == (
        'Invalid signature: you should have sent HmacSHA256Hex("POST\\n/apps/3/events\\n'
        "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&"
        'body_md5=ec365a775a4cd0599faeb73354201b6f", your_secret_key), but you sent "wrong"'
    )
    hidden = _api_error(lambda: _verify(query, body=body, expose_hint=False))
    assert hidden.message == "Invalid signature"


def test_percent_encoded_values_sign_their_decoded_form() -> None:
    """A PHP/Ruby client escapes ',' as %2C in the URL; the transport decodes before us."""
    vector = next(v for v in VECTORS["http"] if v["name"] == "python-sdk-get-channel")
    query, _ = _vector_request(vector)
    url_query = "&".join(f"{k}={v.replace(',', '%2C')}" for k, v in query)
    _verify(parse_qsl(url_query, keep_blank_values=True), method="GET", path=vector["path"])


@pytest.mark.parametrize(
    "signed_path", ["/apps/3/channels/private-a@b", "/apps/3/channels/private-a%40b"]
)
def test_path_signed_decoded_or_as_sent(signed_path: str) -> None:
    query = _signed(path=signed_path)
    _verify(query, method="GET", path="/apps/3/channels/private-a%40b")


def test_decoded_path_retry_does_not_accept_encoded_signature_for_decoded_request() -> None:
    query = _signed(path="/apps/3/channels/private-a%40b")
    _api_error(lambda: _verify(query, method="GET", path="/apps/3/channels/private-a@b"))


def test_uppercase_parameter_names_are_lowercased() -> None:
    assert canonical_query([("Name", "Something else"), ("auth_key", "foo")]) == (
        "auth_key=foo&name=Something else"
    )
    query = _signed(Info="user_count")
    assert ("Info", "user_count") in query
    _verify(query, method="GET", path="/apps/3/channels")


# --------------------------------------------------------------------------------------------
# HTTP API: failures, in the order of http-api.md §2.3


def _without(query: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in query if k != name]


def _replace(query: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == name else v) for k, v in query]


@pytest.mark.parametrize("name", ["auth_key", "auth_timestamp", "auth_version", "auth_signature"])
def test_missing_auth_parameter(name: str) -> None:
    error = _api_error(lambda: _verify(_without(_signed(), name), method="GET"))
    assert error.message == f"Missing parameter: {name}"


@pytest.mark.parametrize(
    ("query", "body", "message"),
    [
        (_replace(_signed(), "auth_version", "1.1"), b"", "Version not supported"),
        (_replace(_signed(), "auth_key", "other"), b"", "Unknown auth_key"),
        (
            _replace(_signed(), "auth_timestamp", "12a"),
            b"",
            'Invalid auth_timestamp: "12a" is not an integer',
        ),
        (
            _replace(_signed(), "auth_timestamp", ""),
            b"",
            'Invalid auth_timestamp: "" is not an integer',
        ),
        (
            _replace(_signed(), "auth_timestamp", "-5"),
            b"",
            'Invalid auth_timestamp: "-5" is not an integer',
        ),
        (_replace(_signed(), "auth_timestamp", "\u0661\u0662"), b"", None),
        (_signed(), b"{}", "Missing parameter: body_md5"),
        (_signed(body=b"{}"), b"{ }", None),
        (
            [*_signed(body_md5=EMPTY_BODY_MD5), ("BODY_MD5", EMPTY_BODY_MD5)],
            b"",
            'Duplicate parameter: "body_md5"',
        ),
        (
            _signed(body_md5=md5_hex(b"x")),
            b"",
            'Invalid body_md5: "9dd4e461268c8034f5c8564e155c67a6" is not the MD5 of the body',
        ),
        ([*_signed(), ("AUTH_KEY", KEY)], b"", 'Duplicate parameter: "auth_key"'),
    ],
)
def test_rejections(query: list[tuple[str, str]], body: bytes, message: str | None) -> None:
    error = _api_error(lambda: _verify(query, method="GET", path="/apps/3/channels", body=body))
    if message is not None:
        assert error.message == message


def test_python_get_body_md5_of_empty_body_is_accepted() -> None:
    _verify(_signed(body_md5=EMPTY_BODY_MD5), method="GET", path="/apps/3/channels")


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (0, True),
        (599, True),
        (599.99, True),
        (-599, True),
        (600, False),
        (-600, False),
        (-599.5, False),
        (10**9, False),
    ],
)
def test_timestamp_window(offset: float, ok: bool) -> None:
    """http-api.md §2.3 step 6 with the Ruby gem's boundary: reject at |diff| >= 600."""
    query = _signed()
    if ok:
        _verify(query, method="GET", path="/apps/3/channels", now=TS + offset)
        return
    error = _api_error(
        lambda: _verify(query, method="GET", path="/apps/3/channels", now=TS + offset)
    )
    assert error.message == (
        f"Timestamp expired: Given timestamp ({TS}) not within 600s of server time "
        f"({int(TS + offset)})"
    )


def test_signature_echo_is_one_line_and_bounded() -> None:
    query = _replace(_signed(), "auth_signature", 'a\nb"' + "x" * 1000)
    error = _api_error(lambda: _verify(query, method="GET", path="/apps/3/channels"))
    assert error.message.endswith('but you sent "a\\nb\\"' + "x" * 124 + '..."')


# --------------------------------------------------------------------------------------------
# HTTP API: requests built by the official pusher-http-python SDK


def _sdk_request(build: Callable[[Any], Any]) -> Any:
    client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
    with mock.patch("time.time", return_value=float(TS)):
        return build(client._pusher_client)


SDK_CALLS: dict[str, Callable[[Any], Any]] = {
    "trigger": lambda c: c.trigger.make_request(["project-3"], "foo", {"some": "data"}),
    "trigger-socket-id": lambda c: c.trigger.make_request("private-a", "ev", "x", "123.456"),
    "trigger-many": lambda c: c.trigger.make_request([f"c{i}" for i in range(100)], "e", "d"),
    "trigger-unicode": lambda c: c.trigger.make_request("a", "\u00e9v\u00e9nement", "\u2603"),
    "send-to-user": lambda c: c.trigger.make_request(["#server-to-user-42"], "e", {"a": 1}),
    "trigger-batch": lambda c: c.trigger_batch.make_request(
        [{"channel": "my-channel", "name": "my-event", "data": {"a": 1}}]
    ),
    "channels-info": lambda c: c.channels_info.make_request("presence-", ["user_count"]),
    "channels-info-plain": lambda c: c.channels_info.make_request(),
    "channel-info": lambda c: c.channel_info.make_request(
        "presence-foobar", ["user_count", "subscription_count"]
    ),
    "users-info": lambda c: c.users_info.make_request("presence-foobar"),
    "terminate": lambda c: c.terminate_user_connections.make_request("12345"),
}


@pytest.mark.parametrize("name", list(SDK_CALLS))
@pytest.mark.parametrize("skew", [0, -599, 599])
def test_python_sdk_requests_verify(name: str, skew: int) -> None:
    request = _sdk_request(SDK_CALLS[name])
    # What the transport sees: the URL the SDK would send, split and percent-decoded.
    url = urlsplit(request.signed_path)
    query = parse_qsl(url.query, keep_blank_values=True)
    assert dict(query) == request.query_params
    verify_request(
        method=request.method,
        path=url.path,
        query=query,
        body=request.body,
        app_key=KEY,
        app_secrets=(SECRET,),
        now=TS + skew,
    )


@pytest.mark.parametrize("name", list(SDK_CALLS))
def test_python_sdk_requests_rejected_with_other_secret_or_late_clock(name: str) -> None:
    request = _sdk_request(SDK_CALLS[name])
    query = list(request.query_params.items())
    kwargs: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "query": query,
        "body": request.body,
        "app_key": KEY,
    }
    _api_error(lambda: verify_request(**kwargs, app_secrets=("other",), now=TS))
    _api_error(lambda: verify_request(**kwargs, app_secrets=(SECRET,), now=TS + 600))


def test_python_sdk_vector_signature() -> None:
    request = _sdk_request(SDK_CALLS["trigger"])
    vector = next(v for v in VECTORS["http"] if v["name"] == "python-sdk-trigger")
    assert request.query_params["auth_signature"] == vector["auth_signature"]


def test_python_sdk_channel_and_user_auth_verify() -> None:
    client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
    private = client.authenticate("private-foobar", SOCKET_ID)
    _channel_auth(private["auth"])
    member = {"user_id": "10", "user_info": {"name": "Mr. Channels"}}
    presence = client.authenticate("presence-foobar", SOCKET_ID, member)
    _channel_auth(presence["auth"], presence["channel_data"], channel="presence-foobar")
    user = client.authenticate_user(SOCKET_ID, {"id": "12345", "user_info": {"n": "\u00e9"}})
    _signin(user["auth"], user["user_data"])


# --------------------------------------------------------------------------------------------
# HTTP API: properties

_param_names = st.text(min_size=1, max_size=12).filter(lambda k: k.lower() not in RESERVED)
_params = st.dictionaries(_param_names, st.text(max_size=20), max_size=5).filter(
    lambda d: len({k.lower() for k in d}) == len(d)
)
_methods = st.sampled_from(["GET", "POST", "PUT", "DELETE"])
_paths = st.text(max_size=40)


@st.composite
def _signed_requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], bytes]:
    method, path, body = draw(_methods), draw(_paths), draw(st.binary(max_size=64))
    signed = sign_request(
        method=method,
        path=path,
        params=draw(_params),
        body=body,
        app_key=KEY,
        app_secret=SECRET,
        timestamp=TS,
    )
    return method, path, draw(st.permutations(list(signed.items()))), body


@given(_signed_requests(), st.floats(min_value=-599, max_value=599))
def test_sign_verify_round_trip(
    request: tuple[str, str, list[tuple[str, str]], bytes], skew: float
) -> None:
    method, path, query, body = request
    _verify(query, method=method, path=path, body=body, now=TS + skew)


def _tamper_text(text: str, index: int, char: str) -> str:
    if not text:
        return char
    index %= len(text)
    return text[:index] + char + text[index + 1 :]


@given(_signed_requests(), st.integers(min_value=0), st.characters(), st.data())
def test_single_character_tamper_is_rejected(
    request: tuple[str, str, list[tuple[str, str]], bytes],
    index: int,
    char: str,
    data: st.DataObject,
) -> None:
    method, path, query, body = request
    target = data.draw(st.sampled_from(["path", "body", "key", "value"]))
    if target == "path":
        tampered_path = _tamper_text(path, index, char)
        assume(tampered_path != path)
        _api_error(lambda: _verify(query, method=method, path=tampered_path, body=body))
        return
    if target == "body":
        raw = body.decode("latin-1")
        tampered_body = _tamper_text(raw, index, chr(ord(char) % 256)).encode("latin-1")
        assume(tampered_body != body)
        _api_error(lambda: _verify(query, method=method, path=path, body=tampered_body))
        return
    position = data.draw(st.integers(min_value=0, max_value=len(query) - 1))
    key, value = query[position]
    if target == "key":
        key = _tamper_text(key, index, char)
        assume(key.lower() != query[position][0].lower())  # case is not significant (§2.2)
    else:
        value = _tamper_text(value, index, char)
        assume(value != query[position][1])
    tampered = [*query[:position], (key, value), *query[position + 1 :]]
    _api_error(lambda: _verify(tampered, method=method, path=path, body=body))


_junk_pairs = st.lists(st.tuples(st.text(max_size=16), st.text(max_size=70)), max_size=8)


@given(
    st.one_of(_methods, st.text(max_size=8)),
    st.text(max_size=40),
    _junk_pairs,
    st.binary(max_size=64),
    st.floats(min_value=-1e12, max_value=1e12),
    st.booleans(),
)
def test_verify_request_only_raises_api_error_on_junk(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    body: bytes,
    now: float,
    expose_hint: bool,
) -> None:
    query = query + [(name, value) for name, value in query if name.lower() in RESERVED]
    with pytest.raises(ApiError) as info:
        _verify(query, method=method, path=path, body=body, now=now, expose_hint=expose_hint)
    assert info.value.status == 401


@given(_signed_requests(), _junk_pairs, st.floats(min_value=TS - 1000, max_value=TS + 1000))
def test_verify_request_near_valid_junk(
    request: tuple[str, str, list[tuple[str, str]], bytes],
    extra: list[tuple[str, str]],
    now: float,
) -> None:
    method, path, query, body = request
    try:
        _verify(query + extra, method=method, path=path, body=body, now=now)
    except ApiError as error:
        assert error.status == 401
        assert "\n" not in error.message
        assert error.message.encode("utf-8")  # printable as a UTF-8 text/plain body


@given(st.text(), st.text(), st.one_of(st.none(), st.text()), st.text())
def test_channel_auth_only_raises_subscription_error(
    socket_id: str, channel: str, channel_data: str | None, auth: str
) -> None:
    try:
        verify_channel_auth(
            app_key=KEY,
            app_secrets=(SECRET,),
            socket_id=socket_id,
            channel=channel,
            auth=auth,
            channel_data=channel_data,
        )
    except SubscriptionError as error:
        assert error.status == 401
    good = sign_channel(
        app_key=KEY,
        app_secret=SECRET,
        socket_id=socket_id,
        channel=channel,
        channel_data=channel_data,
    )
    verify_channel_auth(
        app_key=KEY,
        app_secrets=(SECRET,),
        socket_id=socket_id,
        channel=channel,
        auth=good,
        channel_data=channel_data,
    )


@given(st.text(), st.text(), st.text())
def test_signin_only_raises_pusher_error(socket_id: str, auth: str, user_data: str) -> None:
    try:
        verify_signin(
            app_key=KEY, app_secrets=(SECRET,), socket_id=socket_id, auth=auth, user_data=user_data
        )
    except PusherError as error:
        assert error.code is None
    good = sign_signin(app_key=KEY, app_secret=SECRET, socket_id=socket_id, user_data=user_data)
    verify_signin(
        app_key=KEY, app_secrets=(SECRET,), socket_id=socket_id, auth=good, user_data=user_data
    )


def test_timestamp_window_is_configurable() -> None:
    query = _signed()

    def verify(now: float) -> None:
        verify_request(
            method="GET",
            path="/apps/3/channels",
            query=query,
            body=b"",
            app_key=KEY,
            app_secrets=(SECRET,),
            now=now,
            max_skew=30,
        )

    verify(TS + 29)
    error = _api_error(lambda: verify(TS - 30))
    assert error.message == (
        f"Timestamp expired: Given timestamp ({TS}) not within 30s of server time ({TS - 30})"
    )


@given(secret=st.text(max_size=200), message=st.binary(max_size=300))
def test_hmac_matches_the_standard_library(secret: str, message: bytes) -> None:
    """The keyed states made once per secret (RFC 2104) give hmac.new's answer for any key,
    shorter or longer than SHA-256's block, and any message."""
    key = secret.encode("utf-8", "surrogatepass")
    assert hmac_sha256_hex(secret, message) == hmac.new(key, message, hashlib.sha256).hexdigest()
    assert hmac_sha256_hex(secret, message) == hmac_sha256_hex(secret, message)  # copies
