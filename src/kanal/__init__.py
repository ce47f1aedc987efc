"""kanal: a self-hosted realtime server that speaks the Pusher Channels protocol."""

from kanal.config import App, Config

__version__ = "0.1.0"

__all__ = ["App", "Config", "__version__"]
