"""Secret rotation (docs/apps.md, "Secret rotation"): signatures made with an app's previous
secret are accepted until it expires, for all three schemes, and refused after it exactly as a
wrong secret is. The signatures come from the official ``pusher`` Python SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pusher
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanal.config import App
from kanal.protocol.errors import ApiError, PusherError, SubscriptionError
from kanal.protocol.session import Join, Send, Session, SignIn
from kanal.protocol.signatures import (
    accepted_secrets,
    verify_channel_auth,
    verify_request,
    verify_signin,
)

KEY, NEW, OLD, OTHER = "rotating-key", "new-secret-value", "old-secret-value", "never-a-secret"
SOCKET_ID = "1234.1234"
EXPIRY = 1_800_000_000.0  # previous_secret_expires_at of APP
APP = App(id="5", key=KEY, secret=NEW, previous_secret=OLD, previous_secret_expires_at=EXPIRY)
BEFORE, AT, AFTER = EXPIRY - 0.5, EXPIRY, EXPIRY + 3600


def sdk(secret: str) -> Any:
    return pusher.Pusher(app_id=APP.id, key=KEY, secret=secret)


def test_the_previous_secret_is_accepted_until_its_expiry() -> None:
    assert accepted_secrets(APP, BEFORE) == (NEW, OLD)
    assert accepted_secrets(APP, AT) == (NEW,)
    assert accepted_secrets(APP, AFTER) == (NEW,)
    assert accepted_secrets(APP, None) == (NEW,)  # the time unknown: no rotation


def test_no_previous_secret_means_the_current_one_only() -> None:
    plain = App(id="5", key=KEY, secret=NEW, previous_secret_expires_at=EXPIRY)
    assert accepted_secrets(plain, BEFORE) == (NEW,)


@given(st.sampled_from([NEW, OLD, OTHER]), st.floats(EXPIRY - 10, EXPIRY + 10))
def test_a_channel_auth_is_accepted_exactly_when_its_secret_is(secret: str, now: float) -> None:
    auth = sdk(secret).authenticate("private-orders", SOCKET_ID)["auth"]
    expected_ok = secret == NEW or (secret == OLD and now < EXPIRY)
    try:
        channel_auth(auth, "private-orders", None, now)
    except SubscriptionError:
        assert not expected_ok
    else:
        assert expected_ok


def channel_auth(auth: str, channel: str, channel_data: str | None, now: float) -> None:
    verify_channel_auth(
        app_key=KEY,
        app_secrets=accepted_secrets(APP, now),
        socket_id=SOCKET_ID,
        channel=channel,
        auth=auth,
        channel_data=channel_data,
    )


def test_presence_auth_and_signin_with_either_secret_until_the_expiry() -> None:
    member = {"user_id": "7", "user_info": {"name": "Ada"}}
    for secret in (NEW, OLD):
        presence = sdk(secret).authenticate("presence-room", SOCKET_ID, member)
        channel_auth(presence["auth"], "presence-room", presence["channel_data"], BEFORE)
        user = sdk(secret).authenticate_user(SOCKET_ID, {"id": "7"})
        signin(user["auth"], user["user_data"], BEFORE)
    presence = sdk(OLD).authenticate("presence-room", SOCKET_ID, member)
    with pytest.raises(SubscriptionError, match="Invalid signature"):
        channel_auth(presence["auth"], "presence-room", presence["channel_data"], AT)
    user = sdk(OLD).authenticate_user(SOCKET_ID, {"id": "7"})
    with pytest.raises(PusherError, match="Invalid signature"):
        signin(user["auth"], user["user_data"], AT)


def signin(auth: str, user_data: str, now: float) -> None:
    verify_signin(
        app_key=KEY,
        app_secrets=accepted_secrets(APP, now),
        socket_id=SOCKET_ID,
        auth=auth,
        user_data=user_data,
    )


def test_an_expired_secret_is_refused_with_the_text_of_a_wrong_one() -> None:
    """Nothing in the answer tells an expired previous secret from a secret never used."""
    messages = set()
    for secret in (OLD, OTHER):
        auth = sdk(secret).authenticate("private-orders", SOCKET_ID)["auth"]
        with pytest.raises(SubscriptionError) as info:
            channel_auth(auth, "private-orders", None, AFTER)
        messages.add(info.value.message.rpartition(", but got")[0])
    assert messages == {
        "Invalid signature: Expected HMAC SHA256 hex digest of 1234.1234:private-orders"
    }


SDK_CALLS: dict[str, Callable[[Any], Any]] = {
    "trigger": lambda c: c.trigger.make_request(["orders"], "placed", {"id": 1}),
    "batch": lambda c: c.trigger_batch.make_request([{"channel": "a", "name": "e", "data": "d"}]),
    "channels": lambda c: c.channels_info.make_request("presence-", ["user_count"]),
    "users": lambda c: c.users_info.make_request("presence-room"),
}


def api_call(name: str, secret: str, now_offset: float, expose_hint: bool = True) -> None:
    """One SDK request signed with ``secret`` now, verified as if the server's clock said
    ``EXPIRY + now_offset``: the SDK stamps the real time, so the app's expiry is moved."""
    request = SDK_CALLS[name](sdk(secret)._pusher_client)
    now = time.time()
    app = App(
        id=APP.id,
        key=KEY,
        secret=NEW,
        previous_secret=OLD,
        previous_secret_expires_at=now - now_offset,
    )
    url = urlsplit(request.signed_path)
    verify_request(
        method=request.method,
        path=url.path,
        query=parse_qsl(url.query, keep_blank_values=True),
        body=request.body,
        app_key=KEY,
        app_secrets=accepted_secrets(app, now),
        now=now,
        expose_hint=expose_hint,
    )


@pytest.mark.parametrize("name", list(SDK_CALLS))
def test_http_api_requests_signed_with_either_secret_until_the_expiry(name: str) -> None:
    api_call(name, NEW, -60)
    api_call(name, OLD, -60)
    api_call(name, NEW, 0)
    for secret, offset in ((OLD, 0), (OLD, 60), (OTHER, -60)):
        with pytest.raises(ApiError) as info:
            api_call(name, secret, offset)
        assert info.value.status == 401
        assert info.value.message.startswith("Invalid signature: you should have sent")
        assert "your_secret_key" in info.value.message  # never a secret, current or previous
        with pytest.raises(ApiError) as info:
            api_call(name, secret, offset, expose_hint=False)
        assert info.value.message == "Invalid signature"


def test_a_session_accepts_the_previous_secret_by_the_wall_clock() -> None:
    """The session's own clock is monotonic; the rotation ends at a Unix time (``wall``)."""
    session = Session(APP, SOCKET_ID, now=0.0)
    auth = sdk(OLD).authenticate("private-orders", SOCKET_ID)["auth"]
    subscribe = frame("pusher:subscribe", channel="private-orders", auth=auth)
    assert isinstance(session.receive(subscribe, 1.0, BEFORE)[0], Join)
    for wall in (AT, None):
        [refused, _] = session.receive(subscribe, 1.0, wall)
        assert isinstance(refused, Send) and b"subscription_error" in refused.payload
    user = sdk(OLD).authenticate_user(SOCKET_ID, {"id": "7"})
    signin_frame = frame("pusher:signin", auth=user["auth"], user_data=user["user_data"])
    assert any(isinstance(c, SignIn) for c in session.receive(signin_frame, 1.0, BEFORE))


def frame(event: str, **data: str) -> str:
    return json.dumps({"event": event, "data": data})


def test_a_reconfigured_session_checks_with_the_reloaded_secrets() -> None:
    """A reload hands an open connection its rotated app (``Session.reconfigure``)."""
    session = Session(App(id=APP.id, key=KEY, secret=OLD), SOCKET_ID, now=0.0)
    new_auth = sdk(NEW).authenticate("private-orders", SOCKET_ID)["auth"]
    subscribe = frame("pusher:subscribe", channel="private-orders", auth=new_auth)
    assert not isinstance(session.receive(subscribe, 1.0, BEFORE)[0], Join)
    session.reconfigure(APP)
    assert isinstance(session.receive(subscribe, 2.0, BEFORE)[0], Join)
    old_auth = sdk(OLD).authenticate("private-old", SOCKET_ID)["auth"]
    subscribe_old = frame("pusher:subscribe", channel="private-old", auth=old_auth)
    assert isinstance(session.receive(subscribe_old, 3.0, BEFORE)[0], Join)
