"""Test helpers: a raw Pusher-protocol WebSocket client, a signed HTTP API caller, and a
hand-rolled WebSocket for clients that must misbehave (never read, never pong).

Nothing here sleeps to wait for the server: every wait is "receive until a predicate holds"
under :func:`asyncio.wait_for`. Negative checks (:meth:`WsClient.assert_silent`) wait a short
bounded time, or better, use a sentinel event that must arrive first.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from kanal.protocol.signatures import sign_channel, sign_request, sign_signin
from tests.conftest import APP_ID, APP_KEY, APP_SECRET, RunningServer

__all__ = [
    "TIMEOUT",
    "ApiResponse",
    "Clients",
    "ConnectionClosed",
    "Frame",
    "RawWebSocket",
    "WsClient",
    "api_request",
    "client_frame",
    "data_of",
    "eventually",
    "trigger",
    "wait_until",
]

Frame = dict[str, Any]
Match = str | Callable[[Frame], bool]

TIMEOUT = 5.0  # upper bound for anything the server should do "immediately"
SILENCE = 0.3  # bounded wait for negative assertions


class ConnectionClosed(Exception):
    """The server closed the connection while a frame was expected."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason!r}")
        self.code = code
        self.reason = reason


def data_of(frame: Frame) -> Any:
    """``data`` of a server frame, JSON-decoded when it is a string (protocol.md §2.1)."""
    data = frame.get("data")
    return orjson.loads(data) if isinstance(data, str) else data


def _matcher(match: Match, channel: str | None) -> Callable[[Frame], bool]:
    if isinstance(match, str):
        name = match

        def by_name(frame: Frame) -> bool:
            return frame.get("event") == name and (
                channel is None or frame.get("channel") == channel
            )

        return by_name
    return match


async def wait_until(
    condition: Callable[[], bool], within: float = TIMEOUT, what: str = "condition"
) -> None:
    """Poll a server-side condition (e.g. the hub dropped a connection) until it holds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def eventually(
    probe: Callable[[], Awaitable[bool]], within: float = TIMEOUT, what: str = "condition"
) -> None:
    """Like :func:`wait_until` for a condition that needs an async query (e.g. the HTTP API)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await probe():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class WsClient:
    """One raw WebSocket connection speaking the Pusher protocol.

    Every text frame received is appended to :attr:`frames`; :meth:`expect` consumes frames
    until one matches, keeping the skipped ones in :attr:`skipped`.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, key: str, secret: str) -> None:
        self.ws = ws
        self.key = key
        self.secret = secret
        self.socket_id = ""
        self.activity_timeout = 0
        self.frames: list[Frame] = []
        self.skipped: list[Frame] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.control: list[aiohttp.WSMsgType] = []  # PING/PONG seen with autoping=False

    # --- sending ----------------------------------------------------------------------------

    async def send(self, event: str, data: Any = None, **extra: Any) -> None:
        message: dict[str, Any] = {"event": event, **extra}
        if data is not None:
            message["data"] = data
        await self.ws.send_str(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    # --- receiving --------------------------------------------------------------------------

    async def next_message(self, within: float = TIMEOUT) -> aiohttp.WSMessage:
        """The next raw aiohttp message (control frames included when autoping is off)."""
        msg = await asyncio.wait_for(self.ws.receive(), within)
        if msg.type is aiohttp.WSMsgType.TEXT:
            frame = orjson.loads(msg.data)
            assert isinstance(frame, dict), msg.data
            self.frames.append(frame)
        elif msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
            self.control.append(msg.type)
        elif msg.type is aiohttp.WSMsgType.CLOSE:
            self.close_code = msg.data
            self.close_reason = msg.extra or ""
        elif (
            msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            and self.close_code is None
        ):
            self.close_code = self.ws.close_code
        return msg

    async def next_frame(self, within: float = TIMEOUT) -> Frame:
        """The next text frame; raises :class:`ConnectionClosed` if the server closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            msg = await self.next_message(max(0.0, deadline - loop.time()))
            if msg.type is aiohttp.WSMsgType.TEXT:
                return self.frames[-1]
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                raise ConnectionClosed(self.close_code, self.close_reason)

    async def expect(
        self, match: Match, channel: str | None = None, within: float = TIMEOUT
    ) -> Frame:
        """Receive until a frame matches (event name, optionally channel, or a predicate)."""
        matches = _matcher(match, channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            remaining = deadline - loop.time()
            try:
                frame = await self.next_frame(max(0.0, remaining))
            except TimeoutError:
                seen = [f.get("event") for f in self.skipped[-10:]]
                raise AssertionError(
                    f"no frame matching {match!r} within {within}s; skipped {seen}"
                ) from None
            if matches(frame):
                return frame
            self.skipped.append(frame)

    async def expect_next(self, match: Match, channel: str | None = None) -> Frame:
        """The very next frame must match."""
        frame = await self.next_frame()
        assert _matcher(match, channel)(frame), frame
        return frame

    async def expect_error(self, code: int | None = None, within: float = TIMEOUT) -> Frame:
        frame = await self.expect("pusher:error", within=within)
        assert isinstance(frame["data"], dict), frame
        if code is not None:
            assert frame["data"]["code"] == code, frame
        return frame

    async def expect_closed(self, within: float = TIMEOUT) -> int | None:
        """Read (and keep) frames until the server closes; return the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                await self.next_frame(max(0.0, deadline - loop.time()))
            except ConnectionClosed as closed:
                return closed.code
            except TimeoutError:
                raise AssertionError(f"connection not closed within {within}s") from None

    async def assert_silent(self, match: Match | None = None, within: float = SILENCE) -> None:
        """Nothing (matching) arrives within a short bounded time."""
        matches = _matcher(match, None) if match is not None else (lambda _f: True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while (remaining := deadline - loop.time()) > 0:
            try:
                frame = await self.next_frame(remaining)
            except TimeoutError:
                return
            assert not matches(frame), f"unexpected frame {frame}"
            self.skipped.append(frame)

    async def ping(self) -> None:
        """Round trip ``pusher:ping`` -> ``pusher:pong``: everything sent before is processed."""
        await self.send("pusher:ping", {})
        await self.expect("pusher:pong")

    # --- protocol helpers -------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        *,
        channel_data: str | None = None,
        auth: str | None = None,
        signed: bool | None = None,
    ) -> Frame:
        """Subscribe (signing private/presence channels) and return subscription_succeeded."""
        await self.send_subscribe(channel, channel_data=channel_data, auth=auth, signed=signed)
        return await self.expect("pusher_internal:subscription_succeeded", channel)

    async def send_subscribe(
        self,
        channel: str,
        *,
        channel_data: str | None = None,
        auth: str | None = None,
        signed: bool | None = None,
    ) -> None:
        if signed is None:
            signed = channel.startswith(("private-", "presence-"))
        if auth is None:
            auth = self.channel_auth(channel, channel_data) if signed else ""
        data: dict[str, Any] = {"auth": auth, "channel": channel}
        if channel_data is not None:
            data["channel_data"] = channel_data
        await self.send("pusher:subscribe", data)

    async def join_presence(self, channel: str, user_id: str, user_info: Any = None) -> Frame:
        """Subscribe to a presence channel; returns the decoded ``presence`` roster."""
        channel_data = json.dumps({"user_id": user_id, "user_info": user_info})
        frame = await self.subscribe(channel, channel_data=channel_data)
        presence: Frame = data_of(frame)["presence"]
        return presence

    async def unsubscribe(self, channel: str) -> None:
        await self.send("pusher:unsubscribe", {"channel": channel})

    def channel_auth(self, channel: str, channel_data: str | None = None) -> str:
        return sign_channel(
            app_key=self.key,
            app_secret=self.secret,
            socket_id=self.socket_id,
            channel=channel,
            channel_data=channel_data,
        )

    async def signin(self, user: Mapping[str, Any] | str) -> Frame:
        """``pusher:signin`` with a valid signature; returns ``pusher:signin_success``."""
        user_data = user if isinstance(user, str) else json.dumps(user)
        auth = sign_signin(
            app_key=self.key, app_secret=self.secret, socket_id=self.socket_id, user_data=user_data
        )
        await self.send("pusher:signin", {"auth": auth, "user_data": user_data})
        return await self.expect("pusher:signin_success")

    async def close(self) -> None:
        await self.ws.close()


def _close_timeout() -> Any:
    """aiohttp 3.11 replaced ws_connect's float ``timeout`` with ClientWSTimeout (and warns on
    a float); ./scripts/test-lowest runs against aiohttp 3.9, which takes the float."""
    if hasattr(aiohttp, "ClientWSTimeout"):
        return aiohttp.ClientWSTimeout(ws_close=TIMEOUT)
    return TIMEOUT


async def end_process(proc: asyncio.subprocess.Process, within: float = TIMEOUT) -> None:
    """Terminate a server a test started (if it still runs) and reap it; kill it if it does
    not exit within ``within`` seconds."""
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()


class Clients:
    """Opens WebSocket clients against a running server and closes them all at the end."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self.all: list[WsClient] = []

    async def __aenter__(self) -> Clients:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for client in self.all:
            await client.ws.close()
        if self._session is not None:
            await self._session.close()

    async def open(
        self,
        server: RunningServer,
        *,
        key: str = APP_KEY,
        secret: str = APP_SECRET,
        query: str = "protocol=7&client=js&version=8.4.0",
        path: str | None = None,
        headers: Mapping[str, str] | None = None,
        autoping: bool = True,
    ) -> WsClient:
        """Open a connection without reading anything."""
        assert self._session is not None
        url = server.ws_url(key, query) if path is None else f"{server.base_url}{path}"
        ws = await self._session.ws_connect(
            url,
            autoping=autoping,
            headers=headers,
            max_msg_size=0,
            timeout=_close_timeout(),
        )
        client = WsClient(ws, key, secret)
        self.all.append(client)
        return client

    async def connect(
        self,
        server: RunningServer,
        *,
        key: str = APP_KEY,
        secret: str = APP_SECRET,
        autoping: bool = True,
        headers: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> WsClient:
        """Open a connection and read ``pusher:connection_established``; ``path`` (with its
        query) instead of ``/app/{key}?...``, e.g. under a mount point."""
        client = await self.open(
            server, key=key, secret=secret, autoping=autoping, headers=headers, path=path
        )
        frame = await client.expect_next("pusher:connection_established")
        established = data_of(frame)
        client.socket_id = established["socket_id"]
        client.activity_timeout = established["activity_timeout"]
        return client


# --- HTTP API ----------------------------------------------------------------------------------


class ApiResponse:
    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type

    def json(self) -> Any:
        return orjson.loads(self.body)


async def api_request(
    server: RunningServer,
    method: str,
    path: str,
    *,
    body: bytes | Any = b"",
    params: Mapping[str, str] | None = None,
    key: str = APP_KEY,
    secret: str = APP_SECRET,
    timestamp: int | None = None,
    tamper: Callable[[dict[str, str]], None] | None = None,
) -> ApiResponse:
    """A request signed like the Node SDK does (``kanal.protocol.signatures.sign_request``).

    ``body`` may be bytes or a JSON-serialisable value; ``tamper`` edits the final query.
    """
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    query = sign_request(
        method=method,
        path=path,
        params=dict(params or {}),
        body=raw,
        app_key=key,
        app_secret=secret,
        timestamp=int(time.time()) if timestamp is None else timestamp,
    )
    if tamper is not None:
        tamper(query)
    headers = {"Content-Type": "application/json"} if raw else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.base_url + path, params=query, data=raw or None, headers=headers
        ) as response,
    ):
        return ApiResponse(response.status, await response.read(), response.content_type)


async def trigger(
    server: RunningServer,
    channels: list[str] | str,
    name: str,
    data: str,
    *,
    socket_id: str | None = None,
    app_id: str = APP_ID,
    key: str = APP_KEY,
    secret: str = APP_SECRET,
) -> ApiResponse:
    """``POST /apps/{id}/events``; asserts success."""
    body: dict[str, Any] = {
        "name": name,
        "channels": [channels] if isinstance(channels, str) else channels,
        "data": data,
    }
    if socket_id is not None:
        body["socket_id"] = socket_id
    response = await api_request(
        server, "POST", f"/apps/{app_id}/events", body=body, key=key, secret=secret
    )
    assert response.status == 200, (response.status, response.body)
    return response


# --- a hand-rolled WebSocket client (for misbehaving peers) -----------------------------------


def client_frame(
    opcode: int,
    payload: bytes,
    *,
    masked: bool = True,
    fin: bool = True,
    mask: bytes | None = None,
) -> bytes:
    """A client frame, masked (with ``mask``, else a random key) as RFC 6455 §5.3 requires;
    built independently of kanal's own framing code."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 65536:
        header = bytes((first, mask_bit | 126)) + struct.pack("!H", length)
    else:
        header = bytes((first, mask_bit | 127)) + struct.pack("!Q", length)
    if not masked:
        return header + payload
    key = os.urandom(4) if mask is None else mask
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """A minimal RFC 6455 client on a plain socket: it reads only when told to.

    The receive buffer is made small before connecting, so a peer that stops reading
    fills the server's output buffer quickly.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, port: int, path: str, rcvbuf: int = 4096, first: bytes = b""
    ) -> RawWebSocket:
        """Upgrade on ``path``; ``first`` is written in the same packet as the request."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**24)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            + first
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send_text(self, text: str) -> None:
        await self.send_frame(0x1, text.encode())

    async def send_frame(self, opcode: int, payload: bytes, *, masked: bool = True) -> None:
        self.writer.write(client_frame(opcode, payload, masked=masked))
        await self.writer.drain()

    async def read_frame(self, within: float = TIMEOUT) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame; server frames are never masked."""

        async def read() -> tuple[int, bytes]:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

        return await asyncio.wait_for(read(), within)

    async def read_json(self) -> Frame:
        opcode, payload = await self.read_frame()
        assert opcode == 0x1, (opcode, payload)
        frame: Frame = orjson.loads(payload)
        return frame

    def close(self) -> None:
        self.writer.close()
