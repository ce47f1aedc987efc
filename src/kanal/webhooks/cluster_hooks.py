"""In-process hooks in a cluster: which events they want, and the one process that runs them.

Ownership rule: :class:`ClusterHooks` is the hooks side of
:class:`~kanal.webhooks.cluster_queue.RedisWebhookQueue`, which owns it and writes the events
(see its docstring for the keys). It owns the counters of the hooks stream, the
:class:`HookDemand` and, in a process with hooks, the
:class:`~kanal.webhooks.leader.WebhookLeader` of the hooks stream, which submits to the
process's :class:`~kanal.webhooks.hooks.Hooks`. :class:`HookDemand` is the only user of the
``P{wh}:hooks:wanted`` key (a sorted set: ``app_id NUL event name`` -> when the advertisement
expires, Redis time; ``""`` as the app id means any app), through the ``DEMAND`` script of
:mod:`kanal.adapters.redis_webhook_scripts`.

Why one leader among the processes with hooks: the same reasons as for webhooks (the order of
each channel's events, the alternation of the grace period; ``cluster_queue``), and it makes
"exactly once" mean something: each event runs the hooks of one process. Processes without a
hook never take the lease (they would have nothing to run the event with); a process competes
from its first registration on. This assumes every process registers the same hooks (the same
application code); :class:`HookDemand` warns when it sees otherwise.

Why advertise: hooks live in the processes that registered them (embedded apps), but the event
happens on whichever node the connection is on, often a ``kanal serve`` node without any hook.
Every node has to know what some process's hooks want, as every node knows from its own
configuration what the webhook endpoints want. So each process with hooks advertises its
registrations every ``every`` seconds, each advertisement living ``ttl`` seconds, and every
node reads the union as often. A process's own registrations count at once, before any read.
Hooks registered on one process reach the others' decisions within about ``every`` seconds;
once the last process with hooks is gone, nodes stop writing to the hooks stream after ``ttl``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aredis
from redis.exceptions import RedisError

from kanal.adapters import redis_webhook_scripts as lua
from kanal.config import App, WebhookSettings
from kanal.protocol.webhook_grace import CLOSING, OPENING
from kanal.webhooks.hooks import Hooks
from kanal.webhooks.leader import ClusterWebhookStats, WebhookKeys, WebhookLeader, settle

__all__ = ["ClusterHooks", "HookDemand"]

log = logging.getLogger("kanal.cluster_webhooks")

_Wanted = frozenset[tuple[str, str]]


def _decode(members: list[bytes | str]) -> _Wanted:
    wanted = set()
    for member in members:
        text = member.decode() if isinstance(member, bytes) else member
        app_id, _, name = text.rpartition("\0")  # an event name holds no NUL; an app id might
        wanted.add((app_id, name))
    return frozenset(wanted)


class HookDemand:
    """The cluster's hooks' wishes, refreshed in the background.

    Args:
        client: the queue's Redis client.
        key: ``P{wh}:hooks:wanted``.
        local: this process's hooks, advertised while it has any (``None``: a node without).
        stats: where failed Redis calls are counted (the hooks stream's).
        every: seconds between two refreshes.
        ttl: seconds one advertisement lives (default ``5 × every``).
    """

    def __init__(
        self,
        client: aredis.Redis,
        key: str,
        *,
        local: Hooks | None,
        stats: ClusterWebhookStats,
        every: float = 1.0,
        ttl: float | None = None,
    ) -> None:
        self._key = key
        self._local = local
        self._stats = stats
        self._every = every
        self._ttl_ms = max(1, round((5 * every if ttl is None else ttl) * 1000))
        self._script = client.register_script(lua.DEMAND)
        self._cluster: _Wanted = frozenset()
        self._wake = asyncio.Event()
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._warned_mismatch = False

    @property
    def cluster(self) -> _Wanted:
        """``(app_id, name)`` some process advertised at the last refresh (``""``: any app)."""
        return self._cluster

    def wants(self, app_id: str, name: str) -> bool:
        """Whether some process's hooks run events named ``name`` of app ``app_id``."""
        local = self._local
        if local is not None and local.wants(app_id, name):
            return True
        cluster = self._cluster
        return bool(cluster) and ((app_id, name) in cluster or ("", name) in cluster)

    def kind(self, app_id: str, name: str) -> str | None:
        """The event's kind for the hooks stream (``o``, ``c``, ``n`` as in the ``EMIT``
        script), or ``None`` when no hook wants it. An opening or closing event goes when its
        pair is wanted at all: either one cancels the other within the grace period."""
        if name in OPENING:
            wanted = self.wants(app_id, name) or self.wants(app_id, OPENING[name])
            return "o" if wanted else None
        if name in CLOSING:
            wanted = self.wants(app_id, name) or self.wants(app_id, CLOSING[name])
            return "c" if wanted else None
        return "n" if self.wants(app_id, name) else None

    def refresh_soon(self) -> None:
        """Advertise and read again now (a hook was just registered)."""
        self._wake.set()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._task = asyncio.get_running_loop().create_task(
            self._refresh_forever(), name="kanal-hooks demand"
        )

    async def close(self) -> None:
        """Stop refreshing. An advertisement is left to expire: another process may advertise
        the same registrations, and an entry does not say whose it is."""
        self._running = False
        if self._task is not None:
            await settle([self._task])

    async def _refresh_forever(self) -> None:
        failures = 0
        while self._running:
            self._wake.clear()
            try:
                await self.refresh()
            except (RedisError, OSError, TimeoutError) as exc:
                self._stats.redis_errors += 1
                failures += 1
                if failures == 1:  # the last answer stays in force meanwhile
                    log.warning("hook demand: reading it from Redis failed (%s); retrying", exc)
            except Exception:
                log.exception("hook demand: refresh failed")
            else:
                if failures:
                    log.info("hook demand: Redis answers again after %d failures", failures)
                failures = 0
            if not self._running:
                return
            try:
                async with asyncio.timeout(self._every):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def refresh(self) -> None:
        """Advertise this process's registrations (if any) and read everyone's."""
        local = self._local
        ours = local.demand() if local is not None else frozenset()
        members = [f"{app_id}\0{name}" for app_id, name in sorted(ours)]
        async with asyncio.timeout(max(self._every, 1.0) * 5):
            reply = await self._script(keys=[self._key], args=[self._ttl_ms, *members])
        self._cluster = _decode(reply)
        if ours and not self._warned_mismatch and not self._cluster <= ours:
            self._warned_mismatch = True
            log.warning(
                "hooks: other processes register hooks this one does not (%s); each event runs "
                "the hooks of the one process that runs the cluster's hooks, so register the "
                "same hooks in every process",
                ", ".join(f"{a or '*'}/{n}" for a, n in sorted(self._cluster - ours)),
            )


class ClusterHooks:
    """The hooks stream of one node: its demand, and in a process with hooks, its leader.

    Args:
        client, consumer, apps, lease, poll, block, max_stream_length, batch: as for the
            webhook stream (:class:`~kanal.webhooks.cluster_queue.RedisWebhookQueue`).
        keys: ``P{wh}:hooks:``.
        settings: ``[webhooks]``; ``hook_timeout`` gives the default ``claim_idle``.
        hooks: this process's hooks, or ``None`` on a node without (it only writes).
        claim_idle: as for webhooks; default ``2 × hook_timeout + 5``.
        demand_every: seconds between two refreshes of the demand.
    """

    def __init__(
        self,
        client: aredis.Redis,
        keys: WebhookKeys,
        *,
        consumer: str,
        settings: WebhookSettings,
        hooks: Hooks | None,
        apps: Callable[[str], App | None],
        lease: float,
        claim_idle: float | None,
        poll: float,
        block: float,
        max_stream_length: int,
        batch: int,
        demand_every: float,
    ) -> None:
        self.keys = keys
        self.stats = ClusterWebhookStats()
        self.hooks = hooks
        self.demand = HookDemand(
            client, keys.base + "wanted", local=hooks, stats=self.stats, every=demand_every
        )
        self.leader: WebhookLeader | None = None
        self._running = False
        if hooks is None:
            return
        self.leader = WebhookLeader(
            client,
            keys,
            consumer=consumer,
            dispatcher=hooks,
            apps=apps,
            stats=self.stats,
            lease=lease,
            claim_idle=2 * settings.hook_timeout + 5 if claim_idle is None else claim_idle,
            poll=poll,
            block=block,
            max_stream_length=max_stream_length,
            batch=batch,
            noun="hook",
        )
        hooks.when_registered(self._registered)

    @property
    def leading(self) -> bool:
        """Whether this process currently runs the cluster's in-process hooks."""
        return self.leader is not None and self.leader.leading

    @property
    def inflight(self) -> int:
        return 0 if self.leader is None else self.leader.inflight

    def kind(self, app_id: str, name: str) -> str | None:
        return self.demand.kind(app_id, name)

    async def start(self) -> None:
        self._running = True
        if self.hooks is not None:
            await self.hooks.start()
        self.demand.start()
        if self.hooks is not None and self.hooks.registered:
            self._compete()

    def _registered(self) -> None:
        """A hook was registered: advertise it now, and compete to run the cluster's hooks."""
        if self._running:  # else start() does both
            self.demand.refresh_soon()
            self._compete()

    def _compete(self) -> None:
        if self.leader is not None and not self.leader.started:
            self.leader.start()

    def started_leader(self) -> WebhookLeader | None:
        return self.leader if self.leader is not None and self.leader.started else None

    async def close_hooks(self) -> None:
        """Let the hooks finish what they were given (``shutdown_timeout``), then stop them."""
        self._running = False
        if self.hooks is not None:
            await self.hooks.close()

    async def close_demand(self) -> None:
        await self.demand.close()
