"""The Pusher protocol as the load generator speaks it: targets, HTTP API signing, channel auth.

Everything here is pure (no sockets): a :class:`Target` names one running server and its app
credentials; :func:`trigger_request` and :func:`batch_request` build a complete signed
``POST /apps/{id}/events`` or ``batch_events`` HTTP/1.1 request (raw bytes) and
:func:`channel_auth` signs a private or presence subscription.

Event payloads carry their send time: ``~T<monotonic_ns>~<seq>~`` padded with ``x`` to the
requested size. ``CLOCK_MONOTONIC`` is system-wide on Linux, so a subscriber in another process
can subtract it from its own clock to get the POST-to-receipt latency.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import orjson

__all__ = [
    "EVENT_NAME",
    "MARK",
    "Target",
    "batch_request",
    "channel_auth",
    "event_data",
    "parse_sent_ns",
    "signed_post",
    "trigger_request",
]

EVENT_NAME = "bench-ev"
MARK = b"~T"  # only benchmark events contain it (not in any pusher:* / pusher_internal:* frame)


@dataclass(frozen=True)
class Target:
    """One server under test and the app the benchmark uses on it."""

    name: str
    host: str
    port: int
    app_id: str
    key: str
    secret: str

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/app/{self.key}?protocol=7&client=bench&version=1"


def event_data(size: int, seq: int = 0, sent_ns: int | None = None) -> str:
    """An event ``data`` string of exactly ``size`` characters (longer if size is too small)."""
    stamp = f"~T{time.monotonic_ns() if sent_ns is None else sent_ns}~{seq}~"
    return stamp + "x" * max(0, size - len(stamp))


def parse_sent_ns(payload: bytes) -> int:
    """The send timestamp embedded by :func:`event_data` in a delivered frame."""
    start = payload.find(MARK) + 2
    return int(payload[start : payload.find(b"~", start)])


def trigger_request(
    target: Target, channels: list[str], data: str, name: str = EVENT_NAME, *, close: bool = False
) -> bytes:
    """A signed HTTP/1.1 ``POST /apps/{id}/events`` request, ready to write.

    Keep-alive unless ``close`` (``Connection: close``: a new connection per request).
    """
    body = orjson.dumps({"name": name, "channels": channels, "data": data})
    return signed_post(target, "events", body, close=close)


def batch_request(target: Target, events: list[tuple[str, str]], name: str = EVENT_NAME) -> bytes:
    """A signed ``POST /apps/{id}/batch_events`` of (channel, data) events (at most 10 in
    Pusher's HTTP API reference)."""
    batch = [{"name": name, "channel": channel, "data": data} for channel, data in events]
    return signed_post(target, "batch_events", orjson.dumps({"batch": batch}))


def signed_post(target: Target, endpoint: str, body: bytes, *, close: bool = False) -> bytes:
    """``POST /apps/{id}/<endpoint>`` with ``body``, signed as Pusher's HTTP API reference
    says (auth_key, auth_timestamp, auth_version, body_md5, auth_signature)."""
    path = f"/apps/{target.app_id}/{endpoint}"
    params = {
        "auth_key": target.key,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),  # the protocol mandates MD5
    }
    query = "&".join(f"{k}={params[k]}" for k in sorted(params))
    signature = hmac.new(
        target.secret.encode(), f"POST\n{path}\n{query}".encode(), hashlib.sha256
    ).hexdigest()
    head = (
        f"POST {path}?{query}&auth_signature={signature} HTTP/1.1\r\n"
        f"Host: {target.host}:{target.port}\r\n"
        "Content-Type: application/json\r\n"
        + ("Connection: close\r\n" if close else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def channel_auth(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str = ""
) -> str:
    """``<key>:<hex hmac-sha256(secret, "socket_id:channel[:channel_data]")>``."""
    message = f"{socket_id}:{channel}" + (f":{channel_data}" if channel_data else "")
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"{key}:{digest}"
