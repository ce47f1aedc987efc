"""A client of kanal's HTTP transports that speaks exactly as pusher-js does
(core/http/http_socket.ts): POST streams and polls on ``/pusher/app/{key}/{server}/
{session}/xhr_streaming`` or ``/xhr``, messages POSTed to ``.../xhr_send`` as a JSON array of
strings; frames read line by line. For the transport tests and the benchmark's sanity checks
(the end-to-end tests use pusher-js itself)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

__all__ = ["Frame", "XhrSessionClient", "read_frame"]

WAIT = 5.0  # seconds any one read may take before the test fails
#: (letter, payload): ("o", None), ("a", [message dicts]), ("h", None), ("c", [code, reason])
Frame = tuple[str, Any]


def read_frame(line: bytes) -> Frame:
    """One line of a stream or poll body: its letter and decoded payload."""
    letter, rest = chr(line[0]), line[1:].rstrip(b"\n")
    if letter == "a":
        return letter, [orjson.loads(text) for text in orjson.loads(rest)]
    if letter == "c":
        return letter, orjson.loads(rest)
    return letter, None


class XhrSessionClient:
    """One session; ``stream()`` or ``poll()`` reads, ``send()`` writes."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        port: int,
        key: str = "app-key",
        *,
        prefix: str = "",
        headers: Mapping[str, str] | None = None,
        session: str | None = None,
    ) -> None:
        self.http = http
        self.session = session or f"{secrets.randbelow(1000)}/{secrets.token_hex(4)}"
        self.base = f"http://127.0.0.1:{port}{prefix}/pusher/app/{key}/{self.session}"
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.response: aiohttp.ClientResponse | None = None

    async def stream(self) -> aiohttp.ClientResponse:
        """Open the receive stream (the previous one, if any, is released)."""
        if self.response is not None:
            self.response.release()
        url = f"{self.base}/xhr_streaming?protocol=7&client=js&version=8.6.0"
        self.response = await self.http.post(url, headers=self.headers)
        return self.response

    async def next(self) -> Frame:
        """The stream's next frame."""
        assert self.response is not None
        line = await asyncio.wait_for(self.response.content.readline(), WAIT)
        assert line, "the stream ended"
        return read_frame(line)

    async def messages(self) -> list[dict[str, Any]]:
        """The stream's next ``a[...]`` frame's messages (heartbeats are skipped)."""
        while True:
            letter, payload = await self.next()
            if letter == "a":
                return list(payload)
            assert letter == "h", (letter, payload)

    async def poll(self) -> tuple[int, list[Frame]]:
        """One poll: its status and frames."""
        url = f"{self.base}/xhr?protocol=7&client=js&version=8.6.0"
        async with asyncio.timeout(WAIT):
            async with self.http.post(url, headers=self.headers) as response:
                body = await response.read()
        return response.status, [read_frame(line) for line in body.splitlines(keepends=True)]

    async def send(self, *messages: Any, raw: bytes | None = None) -> int:
        """POST messages (dicts are JSON-encoded, as pusher-js does); the status."""
        texts = [m if isinstance(m, str) else orjson.dumps(m).decode() for m in messages]
        body = raw if raw is not None else orjson.dumps(texts)
        async with self.http.post(f"{self.base}/xhr_send", data=body, headers=self.headers) as r:
            await r.read()
            return r.status

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None
