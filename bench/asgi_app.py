"""The embedded forms of kanal for the benchmark, as uvicorn ``--factory`` targets.

Both read the benchmark's TOML from ``$KANAL_CONFIG`` (:func:`bench.servers.start_kanal_asgi`
writes it): ``plain`` is :mod:`kanal.asgi` serving WebSockets and the HTTP API through
uvicorn; ``own_port`` also serves kanal's own transport on the config's port, which is where
the benchmark's clients go.
"""

from __future__ import annotations

from kanal.asgi import KanalApp, create_app

__all__ = ["own_port", "plain"]


def plain() -> KanalApp:
    return create_app()


def own_port() -> KanalApp:
    return create_app(own_port=True)
