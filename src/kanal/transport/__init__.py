"""The only package that does network I/O: sockets and HTTP/WebSocket on asyncio protocols
(httptools parses HTTP requests), and aiohttp's client for webhook delivery."""

__all__: list[str] = []
