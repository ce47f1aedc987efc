"""The smallest web app embedding kanal, for ``uvicorn tests.embedded_app:app --workers N``.

Its settings come from ``$KANAL_CONFIG`` (a TOML file, as ``kanal serve --config`` reads), so
each worker process uvicorn starts builds the same node from the same file.
"""

from __future__ import annotations

from kanal.asgi import create_app

__all__ = ["app"]

app = create_app()
