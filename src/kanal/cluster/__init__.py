"""Cluster upkeep of one node (``[scaling] adapter = "redis"``).

:mod:`~kanal.cluster.maintainer` holds :class:`ClusterMaintainer`, a timer loop that renews
this node's lease, reaps nodes whose lease ran out (their departures announced through the
hub, once cluster-wide), rebuilds this node's entries in Redis after an outage or a lost lease,
and runs the presence reconciliation rounds that follow an outage. It owns only that timer and
when to reconcile. The shared facts themselves (occupancy, rosters, leases, the degraded flag)
live in :mod:`kanal.adapters`, this node's local state in :mod:`kanal.hub`, and the webhook
queue's own leader lease in :mod:`kanal.webhooks.leader`.
"""

from kanal.cluster.maintainer import ClusterMaintainer

__all__ = ["ClusterMaintainer"]
