"""The HTTP client behind webhook delivery: aiohttp, and nothing else.

Ownership rule: this is the only webhook module that imports the network library (docs/design.md:
network code is thin and kept in one place). It implements the
:class:`~kanal.webhooks.delivery.WebhookClient` seam: one POST of ready-made bytes and headers,
answered with the status code. Everything Pusher-specific (body, signature, retries) happens
before it is called.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

__all__ = ["AiohttpWebhookClient"]


class AiohttpWebhookClient:
    """One :class:`aiohttp.ClientSession` shared by every endpoint; create it on the loop.

    The pool has no connection cap (each endpoint has at most one request in flight, so a slow
    endpoint cannot starve the others) and no cookie jar (endpoints cannot set cookies that
    would be sent to other endpoints).
    """

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "kanal-webhooks"},
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body`` as is; return the status. Redirects are not followed (webhooks.md §5).

        ``headers`` must include ``Content-Type``: aiohttp would otherwise label raw bytes
        ``application/octet-stream``. Raises :class:`aiohttp.ClientError` or :class:`OSError`
        when the request fails; the caller bounds the time with :func:`asyncio.timeout`.
        """
        async with self._session.post(
            url, data=body, headers=dict(headers), allow_redirects=False
        ) as response:
            return response.status

    async def close(self) -> None:
        await self._session.close()
