"""Raw Pusher-protocol WebSocket subscribers (no pusher-js): connect, subscribe, count.

:class:`Subscriber` is the protocol state machine, independent of the socket library: it waits
for ``pusher:connection_established``, subscribes to its channels (signing private and presence
ones), waits for every ``pusher_internal:subscription_succeeded``, and from then on only counts
benchmark events (frames containing :data:`~bench.protocol.MARK`) into the worker's shared
:class:`Stats`, optionally recording the latency embedded in each.

Three transports feed it: picows (compiled, the default: the generator must not be the
bottleneck), aiohttp (a fallback so the benchmark and its smoke test run where picows is not
installed; much slower, and the report says which one ran) and, with ``connect(...,
kstamp=True)``, :mod:`bench.stampclient`: raw sockets whose reads carry the kernel's arrival
time, for the latency scenario. That transport passes each frame's arrival time (monotonic ns)
to :meth:`Subscriber.feed`; the latency recorded is then the kernel's, and the user-space one
(when the generator got round to the frame) is recorded next to it.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable
from typing import Any

import orjson

from bench.protocol import MARK, channel_auth, parse_sent_ns
from bench.stampclient import connect_stamped, realtime_offset

__all__ = ["BACKEND", "Stats", "Subscriber", "connect"]

try:
    import picows

    BACKEND = "picows " + str(getattr(picows, "__version__", "?"))
except ImportError:  # pragma: no cover - depends on the environment
    picows = None  # type: ignore[assignment]
    BACKEND = "aiohttp (fallback: install bench/requirements.txt for picows)"

_PONG = b'{"event":"pusher:pong","data":{}}'
_SUCCEEDED = b"pusher_internal:subscription_succeeded"
_ESTABLISHED = b"pusher:connection_established"
_ERRORS = (b"pusher:error", b"pusher:subscription_error")
Channel = tuple[str, str]  # (channel name, presence channel_data or "")


class Stats:
    """Counters shared by every subscriber of one generator process.

    ``latencies`` (ns, ``None`` unless recording) holds each benchmark frame's latency by its
    receipt stamp: the kernel's arrival time when the transport provides one, else the
    user-space time of :meth:`Subscriber.feed`. ``user_latencies`` always holds the latter.
    ``clock_offset`` is ``CLOCK_REALTIME - CLOCK_MONOTONIC`` (ns) for converting kernel stamps,
    sampled at every :meth:`reset`; ``unstamped`` counts reads that came without a stamp and
    ``merged`` the benchmark frames that shared their read with a later one: a read carries the
    stamp of its latest segment, so theirs may be late (exact if they came in one segment).
    """

    __slots__ = (
        "clock_offset",
        "closed",
        "frames",
        "last_rx",
        "latencies",
        "merged",
        "unstamped",
        "user_latencies",
    )

    def __init__(self) -> None:
        self.frames = 0
        self.last_rx = 0
        self.closed = 0
        self.unstamped = 0
        self.merged = 0
        self.latencies: array[int] | None = None
        self.user_latencies: array[int] = array("q")
        self.clock_offset = realtime_offset()

    def reset(self, latency: bool) -> None:
        self.frames = 0
        self.last_rx = 0
        self.unstamped = 0
        self.merged = 0
        self.latencies = array("q") if latency else None
        self.user_latencies = array("q")
        self.clock_offset = realtime_offset()


class Subscriber:
    """One connection's protocol state; ``send`` is bound by the transport."""

    __slots__ = ("_auth", "_channels", "_pending", "live", "ready", "send", "socket_id", "stats")

    def __init__(self, stats: Stats, channels: list[Channel], auth: tuple[str, str]) -> None:
        self.stats = stats
        self._channels = channels
        self._auth = auth
        self._pending = len(channels)
        self.live = False
        self.socket_id = ""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.send: Callable[[bytes], None] = _unbound

    def feed(self, payload: bytes, stamp: int = 0) -> None:
        """One text message; ``stamp``: its kernel arrival time (monotonic ns), 0 if unknown."""
        if self.live:
            if MARK in payload:
                stats = self.stats
                stats.frames += 1
                now = time.monotonic_ns()
                stats.last_rx = now
                if stats.latencies is not None:
                    sent = parse_sent_ns(payload)
                    stats.latencies.append((stamp or now) - sent)
                    stats.user_latencies.append(now - sent)
            elif b"pusher:ping" in payload:
                self.send(_PONG)
            return
        self._handshake(payload)

    def _handshake(self, payload: bytes) -> None:
        if self.ready.done():
            return
        if _SUCCEEDED in payload:
            self._pending -= 1
            if self._pending == 0:
                self.live = True
                self.ready.set_result(None)
        elif _ESTABLISHED in payload:
            self.socket_id = orjson.loads(orjson.loads(payload)["data"])["socket_id"]
            for channel, channel_data in self._channels:
                self.send(orjson.dumps(self._subscribe(channel, channel_data)))
        elif any(marker in payload for marker in _ERRORS):
            self.ready.set_exception(RuntimeError(payload[:300].decode(errors="replace")))

    def _subscribe(self, channel: str, channel_data: str) -> dict[str, Any]:
        data: dict[str, str] = {"channel": channel}
        if channel.startswith(("private-", "presence-")):
            data["auth"] = channel_auth(*self._auth, self.socket_id, channel, channel_data)
        if channel_data:
            data["channel_data"] = channel_data
        return {"event": "pusher:subscribe", "data": data}

    def lost(self) -> None:
        self.stats.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before subscribed"))


def _unbound(_: bytes) -> None:
    raise RuntimeError("subscriber is not connected")


Closer = Callable[[], None]


async def connect(url: str, sub: Subscriber, wait_s: float, kstamp: bool = False) -> Closer:
    """Open the WebSocket for ``sub`` and wait until all its subscriptions succeeded.

    ``kstamp``: use the kernel-stamped raw-socket transport (:mod:`bench.stampclient`)
    instead of picows / aiohttp.
    """
    if kstamp:
        closer = await connect_stamped(url, sub)
    elif picows is not None:
        closer = await _connect_picows(url, sub)
    else:
        closer = await _connect_aiohttp(url, sub)
    try:
        await asyncio.wait_for(asyncio.shield(sub.ready), wait_s)
    except BaseException:
        closer()
        raise
    return closer


if picows is not None:

    class _Listener(picows.WSListener):
        def __init__(self, sub: Subscriber) -> None:
            super().__init__()
            self.sub = sub

        def on_ws_connected(self, transport: Any) -> None:
            self.sub.send = lambda data: transport.send(picows.WSMsgType.TEXT, data)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == picows.WSMsgType.TEXT:
                self.sub.feed(frame.get_payload_as_bytes())
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: Any) -> None:
            self.sub.lost()


async def _connect_picows(url: str, sub: Subscriber) -> Closer:
    transport, _ = await picows.ws_connect(
        lambda: _Listener(sub),
        url,
        websocket_handshake_timeout=30,
        enable_auto_pong=True,
        max_frame_size=64 * 1024 * 1024,
    )
    return lambda: transport.disconnect(graceful=False)


async def _connect_aiohttp(url: str, sub: Subscriber) -> Closer:
    import aiohttp

    session = aiohttp.ClientSession()
    try:
        ws = await session.ws_connect(url, max_msg_size=0, autoping=True)
    except BaseException:
        await session.close()
        raise
    loop = asyncio.get_running_loop()
    sub.send = lambda data: loop.create_task(ws.send_str(data.decode())).add_done_callback(_quiet)

    async def pump() -> None:
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    sub.feed(message.data.encode())
        finally:
            sub.lost()
            await session.close()

    task = loop.create_task(pump())

    def close() -> None:
        task.cancel()

    return close


def _quiet(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
