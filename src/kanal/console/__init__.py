"""The live console's memory: what happened on this node, per app, for ``/console``.

Ownership rule: :class:`~kanal.console.recorder.Recorder` is the one place that keeps the
console's records: a bounded ring of events per app (connections, subscriptions, refusals, API
triggers, client events, sign-ins, terminations), a bounded ring of webhook deliveries per app,
and message rates. The hub, the service and the webhook pipeline *report* to it; they never read
it. It decides nothing about the protocol: the routes that show it are
:mod:`kanal.transport.console`, the page is ``static/``, and the channel list and presence rosters
it shows come from :meth:`kanal.service.ChannelsApi.overview`, the same store answers the HTTP
API gives.

Why it costs nothing while nobody watches: every report of a message or connection is guarded
by the caller with ``if recorder.watching:`` (one attribute read). ``watching`` is true only while
some console has polled within :attr:`Recorder.lease` seconds. Webhook deliveries are the
exception: they are recorded always (they are rare next to messages, and a webhook that failed
a minute ago is exactly what someone opens the console to find).
"""

from kanal.console.recorder import Recorder

__all__ = ["Recorder"]
