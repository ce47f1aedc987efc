"""The families that other objects own, registered with a node's :class:`Metrics`.

The composition roots (``kanal.server.build``) call these once per node: each reads its
owner's stats object or property at scrape time, so the owners only add to plain numbers.
docs/metrics.md lists every family; tests/test_metrics_docs.py checks that list against a
scrape.
"""

from __future__ import annotations

from kanal.hub import Hub
from kanal.metrics.registry import Metrics
from kanal.webhooks import Hooks, RedisWebhookQueue, WebhookDispatcher

__all__ = ["register_hooks", "register_node", "register_queue", "register_webhooks"]


def register_node(metrics: Metrics, hub: Hub, app_ids: list[str]) -> None:
    """The hub's gauges; every configured app's series exist from the start at 0 (so that
    rate() and absent() work from the first scrape)."""
    for app_id in app_ids:
        _ = metrics.apps[app_id]  # a defaultdict: creates the app's counters
    metrics.gauge("kanal_channels", "Channels with local subscribers", lambda: hub.channel_count)


def register_webhooks(
    metrics: Metrics, dispatcher: WebhookDispatcher, queue: RedisWebhookQueue | None
) -> None:
    stats = dispatcher.stats
    queued = queue.stats if queue is not None else None

    def shutdown() -> int:  # in a cluster, events can also be dropped before Redis has them
        return stats.dropped_shutdown + (queued.dropped_shutdown if queued is not None else 0)

    metrics.counter(
        "kanal_webhooks_sent_total", "Webhook events delivered (2xx)", lambda: stats.sent
    )
    metrics.counter(
        "kanal_webhooks_failed_attempts_total",
        "Webhook HTTP attempts that failed",
        lambda: stats.failed_attempts,
    )
    dropped = "Webhook events given up"
    for reason, read in (
        ("expired", lambda: stats.dropped_expired),
        ("overflow", lambda: stats.dropped_overflow),
        ("shutdown", shutdown),
    ):
        metrics.counter("kanal_webhooks_dropped_total", dropped, read, reason=reason)
    metrics.gauge("kanal_webhooks_pending", "Webhook events queued", lambda: dispatcher.pending)
    metrics.histogram(
        "kanal_webhooks_request_duration_seconds",
        "Time each webhook POST took to answer or time out",
        stats.request_seconds,
    )
    metrics.histogram(
        "kanal_webhooks_delivery_seconds",
        "Time from queued (grace period over) to delivered, per webhook request",
        stats.delivery_seconds,
    )
    metrics.histogram(
        "kanal_webhooks_attempts",
        "POSTs per webhook request until delivered or dropped",
        stats.attempts,
    )


def register_queue(metrics: Metrics, queue: RedisWebhookQueue) -> None:
    """The cluster's webhook queue (docs/scaling.md): this node's side of it."""
    stats = queue.stats
    metrics.gauge(
        "kanal_webhooks_queue_buffered",
        "Webhook events emitted on this node not yet written to Redis",
        lambda: queue.buffered,
    )
    metrics.gauge(
        "kanal_webhooks_queue_leader",
        "1 on the node currently sending the cluster's webhooks",
        lambda: int(queue.is_leader),
    )
    metrics.counter(
        "kanal_webhooks_queue_cancelled_total",
        "Held removals cancelled with their re-addition by the grace period (pairs)",
        lambda: stats.cancelled,
    )
    metrics.counter(
        "kanal_webhooks_queue_claimed_total",
        "Queued webhook events taken over from a node that died or left",
        lambda: stats.claimed,
    )
    dropped = "Webhook events given up"
    for reason, read in (
        ("buffer", lambda: stats.dropped_overflow),
        ("trimmed", lambda: stats.dropped_trimmed),
    ):
        metrics.counter("kanal_webhooks_dropped_total", dropped, read, reason=reason)


def register_hooks(metrics: Metrics, hooks: Hooks) -> None:
    stats = hooks.stats
    metrics.counter(
        "kanal_hooks_run_total", "In-process hook calls that returned", lambda: stats.ran
    )
    failed = "In-process hook calls that raised or timed out"
    for reason, read in (("error", lambda: stats.failed), ("timeout", lambda: stats.timed_out)):
        metrics.counter("kanal_hooks_failed_total", failed, read, reason=reason)
    dropped = "Events an in-process hook never ran"
    for reason, read in (
        ("overflow", lambda: stats.dropped_overflow),
        ("shutdown", lambda: stats.dropped_shutdown),
    ):
        metrics.counter("kanal_hooks_dropped_total", dropped, read, reason=reason)
    metrics.gauge(
        "kanal_hooks_pending", "Events queued or running, per hook", lambda: hooks.pending
    )
