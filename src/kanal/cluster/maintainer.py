"""ClusterMaintainer: this node's lease, reaping dead nodes, and recovery from Redis outages.

Ownership rule: the maintenance loop owns nothing but its timer and when to reconcile.
Every ``lease / 3`` seconds it (1) renews this node's lease, (2) rebuilds this node's entries
in Redis when the lease was lost or Redis was away (from the hub's local state: the hub owns
it), (3) reaps nodes whose lease ran out (not during the first lease after this node's own
outage or rebuild: its peers may be late for the same reason), and (4) for a few rounds
after an outage, has the hub reconcile its presence subscribers' member lists with Redis.
Whatever steps 2 and 3 change cluster-wide is announced through the hub, so member_removed /
channel_vacated (and their webhooks) for a crashed node fire exactly once: the reap claim is
atomic, so one live node announces each departure.

Why step 4: during an outage a leave or join is answered from the node's local fallback and
announced only to its own clients, and pub/sub drops whatever is published while a node is
not subscribed. When Redis comes back empty, nodes put back what they hold, so nothing
reports a member who left meanwhile. Each node therefore compares, on the receiving side,
what its clients were told with the roster in Redis (``Hub.reconcile_presence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from kanal.adapters.redis import Arrival, Departure, NodeState, RedisMembership
from kanal.adapters.resilient import ResilientBroker, ResilientMembership
from kanal.config import App
from kanal.hub import Hub

__all__ = ["ClusterMaintainer"]

log = logging.getLogger("kanal.cluster")

# Rounds (once this node is rebuilt in Redis and subscribed again) at which the hub reconciles
# presence after an outage: several, because every node puts its own members back at its own
# next round, and members joined on a node that rebuilds later must still be picked up.
RECONCILE_ROUNDS = 4
# A member missing from Redis is removed only when missing at this many consecutive rounds:
# the members of a node that has not rebuilt yet look absent for up to one round.
REMOVAL_CONFIRMATIONS = 2


class ClusterMaintainer:
    """Runs the lease / rebuild / reap loop for one node."""

    def __init__(
        self,
        hub: Hub,
        membership: ResilientMembership,
        redis: RedisMembership,
        apps: Callable[[str], App | None],
        *,
        lease: float,
        wall: Callable[[], float],
        broker: ResilientBroker | None = None,
    ) -> None:
        self._hub = hub
        self._membership = membership
        self._redis = redis
        self._apps = apps
        self._lease = lease
        self._interval = max(lease / 3.0, 0.05)
        self._reap_from = 0.0  # no reaping before this time (see step)
        self._wall = wall
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._broker = broker
        self._subscriptions = 0  # the broker's count when last looked at
        self._reconcile_rounds = 0  # rounds of reconciliation still due
        self._restart_absences = False

    async def start(self) -> None:
        if self._broker is not None:  # the first subscription is no recovery
            self._subscriptions = self._broker.subscriptions
        await self.step()
        self._task = asyncio.create_task(self._run(), name="kanal-cluster-maintainer")

    async def close(self) -> None:
        """Stop the loop and say goodbye: this node's entries leave Redis now, announced."""
        # The flag first: redis-py can swallow a cancellation that lands inside a command,
        # and the loop must end anyway (else this waits forever and shutdown hangs).
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self._announce_departures(await self._redis.forget_node())
        except RedisError as error:
            log.warning("could not remove this node from redis on shutdown: %s", error)
        await self._redis.close()

    async def _run(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                # An event wait, not a sleep: close() ends the pause at once.
                await asyncio.wait_for(self._closing.wait(), self._interval)
            if self._closing.is_set():
                return
            try:
                await self.step()
            except Exception:  # the loop must survive anything; the next step retries
                log.exception("cluster maintenance step failed")

    async def step(self) -> None:
        """One round: heartbeat, rebuild if needed, reap dead nodes."""
        now = self._wall()
        try:
            alive = await self._redis.heartbeat(now)
            if not alive or self._membership.degraded:
                await self._rebuild(now)
                self._reconcile_soon()
                # Its peers could not renew their leases during the outage either (a
                # Sentinel failover that keeps the data, a network blip): give each a
                # lease to come back, else the first node back would reap the others and
                # announce member_removed, then member_added when they rebuild.
                self._reap_from = now + self._lease
            if now >= self._reap_from:
                await self._announce_departures(await self._redis.reap_dead_nodes(now))
            await self._reconcile()
        except RedisError as error:
            self._membership.fail(error)

    def _reconcile_soon(self) -> None:
        self._reconcile_rounds = RECONCILE_ROUNDS
        self._restart_absences = True

    async def _reconcile(self) -> None:
        """Step 4; waits for the subscription, since events published before it is back
        may be lost for this node too."""
        if self._broker is not None:
            if self._broker.subscriptions != self._subscriptions:  # it was lost meanwhile
                self._subscriptions = self._broker.subscriptions
                self._reconcile_soon()
            if not self._broker.healthy:
                return
        if self._reconcile_rounds == 0 or self._membership.degraded:
            return
        self._reconcile_rounds -= 1
        restart, self._restart_absences = self._restart_absences, False
        sent = await self._hub.reconcile_presence(
            self._redis.roster, confirmations=REMOVAL_CONFIRMATIONS, restart=restart
        )
        if sent:
            log.info("presence reconciled with redis: %d member events sent", sent)

    async def _rebuild(self, now: float) -> None:
        # Flip first: writes from now on go to Redis, queued behind the rebuild, which reads
        # the hub's state only once in-flight writes are done (RedisMembership.rebuild).
        self._membership.recovered()
        result = await self._redis.rebuild(self._node_state, now)
        await self._announce_departures(result.departures)
        await self._announce_arrivals(result.arrivals)

    def _node_state(self) -> NodeState:
        subscriptions, signed_in, connections = self._hub.local_state()
        return NodeState(subscriptions, signed_in, connections)

    async def _announce_departures(self, departures: list[Departure]) -> None:
        for departure in departures:
            app = self._apps(departure.app_id)
            if app is None:
                continue
            if departure.kind == "channel" and departure.leave is not None:
                await self._hub.announce_leave(app, departure.target, departure.leave)
            elif departure.kind == "user" and departure.user_offline:
                await self._hub.announce_presence_of_user(app, departure.target, online=False)

    async def _announce_arrivals(self, arrivals: list[Arrival]) -> None:
        for arrival in arrivals:
            app = self._apps(arrival.app_id)
            if app is None:
                continue
            if arrival.kind == "channel" and arrival.join is not None:
                await self._hub.announce_join(app, arrival.target, arrival.join, arrival.socket_id)
            elif arrival.kind == "user" and arrival.user_online:
                await self._hub.announce_presence_of_user(app, arrival.target, online=True)
