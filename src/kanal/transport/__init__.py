"""The only package that imports the network library (aiohttp)."""

__all__: list[str] = []
