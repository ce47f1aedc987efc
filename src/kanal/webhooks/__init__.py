"""Webhooks (webhooks.md): which endpoints (and in-process hooks) get an event, when, and getting
it to them.

* :mod:`~kanal.webhooks.dispatch`: :class:`WebhookDispatcher`, the hub's webhook sink on one
  node. It owns routing (:func:`~kanal.webhooks.dispatch.wants`), the grace period (§4, rules
  in :mod:`kanal.protocol.webhook_grace`) and the lifecycle of every endpoint's sender.
* :mod:`~kanal.webhooks.delivery`: delivery to one endpoint with retries: its queue, batches,
  signing, the POST (through the ``WebhookClient`` seam) and backoff (§2, §5).
* :mod:`~kanal.webhooks.cluster_queue`: :class:`RedisWebhookQueue`, the sink in cluster mode:
  one queue in Redis shared by every node, with the grace period decided in Redis Lua.
* :mod:`~kanal.webhooks.leader`: the one node at a time that reads that queue and hands its
  entries to its own dispatcher, which sends them.
* :mod:`~kanal.webhooks.hooks`: :class:`Hooks`, an embedded app's in-process hooks
  (``kanal_app.hooks``): the registry, and which hooks run an event. The pipeline above treats
  them as one more target of every app, next to its endpoints, so they see the same events
  after the same grace period.
* :mod:`~kanal.webhooks.hook_worker`: one hook's queue, and the worker that calls it (in a
  thread of its own, or as a task), times it out, logs and counts its failures.
* :mod:`~kanal.webhooks.cluster_hooks`: the hooks in a cluster: which events the processes
  with hooks want (so that every node writes them to the hooks stream), and the one process
  with hooks at a time that reads that stream and runs them.

Dependencies point one way: ``delivery`` imports none of the others, ``hook_worker`` none
either, ``hooks`` uses both, ``dispatch`` uses ``delivery`` and ``hooks``, ``leader`` uses
``dispatch``, ``cluster_hooks`` uses ``leader`` and ``hooks``, and ``cluster_queue`` uses
``cluster_hooks``, ``leader`` and ``dispatch``. The aiohttp client is
:mod:`kanal.transport.webhook_client`; the request body, its signature and the value a hook is
called with are in :mod:`kanal.protocol`.
"""

from kanal.webhooks.cluster_queue import RedisWebhookQueue
from kanal.webhooks.dispatch import WebhookDispatcher
from kanal.webhooks.hooks import HookEvent, Hooks

__all__ = ["HookEvent", "Hooks", "RedisWebhookQueue", "WebhookDispatcher"]
