"""The Pusher rules as pure, synchronous code: no asyncio, sockets, clock or randomness.

Time and new ids are passed in as arguments; everything returns values. ``tests/test_layering.py``
fails if anything in this package imports I/O.
"""

__all__: list[str] = []
