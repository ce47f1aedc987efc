"""The hub: the one owner of channel, presence and user membership on this node.

:class:`Hub` (``hub.py``) carries out what sessions and the broker ask for; the modules beside
it hold parts of its state and are changed only through it: ``connection.py`` (the transport
contract and the per-connection record), ``users.py`` (sign-ins, watchlists), ``rosters.py``
(announced presence rosters), ``index.py`` (lookup tables), ``subscription_count.py`` (the
count throttle) and ``announce.py`` (broadcasts and webhooks after the store's answers). It
imports no transport; the cluster's shared facts come from :mod:`kanal.adapters`.
"""

from kanal.hub.announce import NullWebhooks, WebhookSink
from kanal.hub.connection import Connection
from kanal.hub.hub import Hub

__all__ = ["Connection", "Hub", "NullWebhooks", "WebhookSink"]
