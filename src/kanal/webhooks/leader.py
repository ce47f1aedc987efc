"""The reading side of the cluster's webhook queue: leader lease, promoter, consumer, acks.

Ownership rule: :class:`WebhookLeader` is the only code that reads the webhook stream
(``XREADGROUP``, ``XAUTOCLAIM``), acknowledges and deletes its entries, moves due holds to it
(the ``PROMOTE`` script) and takes, renews or gives up the ``P{wh}:leader`` lease. It is
owned by :class:`kanal.webhooks.cluster_queue.RedisWebhookQueue`, which writes the stream and whose
docstring has the key layout and the reasons for a single leader.

At most one node leads. It submits entries to its
:class:`~kanal.webhooks.dispatch.WebhookDispatcher` in stream order, which keeps per-channel
order (webhooks.md §5), and acknowledges an entry (``XACK`` + ``XDEL``) only once every
endpoint delivered it or definitively dropped it. Entries another consumer left pending (a
leader that died, or one that left and handed them over) are claimed and delivered before any
new entry is read. A leader steps down before its lease can have expired, so two nodes never
read at the same time unless a node stalls for a whole lease.

Cancellation: Python 3.11's ``asyncio.wait_for``, which redis-py uses for every send, can
swallow a cancellation that arrives just as the send completes. Every loop here therefore
also stops at its next turn when told so by a flag, and :func:`settle` bounds the wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import redis.asyncio as aredis
from redis.exceptions import RedisError, ResponseError

from kanal.adapters import redis_webhook_scripts as lua
from kanal.config import App
from kanal.protocol.webhooks import WebhookEvent
from kanal.webhooks.dispatch import Submitter

__all__ = ["GROUP", "ClusterWebhookStats", "Retry", "WebhookKeys", "WebhookLeader", "settle"]

log = logging.getLogger("kanal.cluster_webhooks")

GROUP = "webhooks"  #: the stream's consumer group
_ABANDONED_IDLE_MS = 10**12  # idle time given to entries a closing leader leaves behind
_SETTLE = 2.0  # the longest wait for a cancelled loop to end
_RETRY_FIRST, _RETRY_CAP = 0.05, 2.0  # delays between attempts while Redis is unreachable


@dataclass(slots=True)
class ClusterWebhookStats:
    """Counters of the Redis side, in events (the HTTP side counts in the dispatcher's)."""

    queued: int = 0  #: events appended to the stream (including released holds)
    held: int = 0  #: removals put on hold for the grace period
    cancelled: int = 0  #: held removals cancelled with their opening event (pairs)
    claimed: int = 0  #: entries taken over from another node after it died or left
    dropped_overflow: int = 0  #: oldest events pushed out of a full local buffer (WARNING)
    dropped_shutdown: int = 0  #: events emitted after close, or still buffered when it ended
    dropped_trimmed: int = 0  #: entries the stream cap removed before they were sent (ERROR)
    redis_errors: int = 0  #: failed Redis calls (each outage is logged at WARNING)


@dataclass(frozen=True, slots=True)
class WebhookKeys:
    """The queue's keys under one prefix; ``{wh}`` puts them all in one Redis Cluster slot."""

    base: str  #: ``<prefix>{wh}:``

    @property
    def stream(self) -> str:
        return self.base + "q"

    @property
    def hold(self) -> str:
        return self.base + "hold"

    @property
    def due(self) -> str:
        return self.base + "due"

    @property
    def leader(self) -> str:
        return self.base + "leader"

    def marker(self, batch_id: str) -> str:
        return f"{self.base}b:{batch_id}"


class Retry:
    """Growing delays between attempts of a failing loop, and logging of the outage."""

    def __init__(self, what: str, stats: ClusterWebhookStats) -> None:
        self.what = what
        self.stats = stats
        self.failures = 0

    async def failed(self, exc: Exception) -> None:
        if isinstance(exc, RedisError | OSError):
            self.stats.redis_errors += 1
            if self.failures == 0:
                log.warning("webhook queue: %s failed (%s); retrying", self.what, exc)
        else:  # a bug: log it every time, and keep the loop alive
            log.error("webhook queue: %s failed", self.what, exc_info=exc)
        delay = min(_RETRY_CAP, _RETRY_FIRST * 2.0**self.failures)
        self.failures += 1
        await asyncio.sleep(delay)

    def succeeded(self) -> None:
        if self.failures:
            log.info("webhook queue: %s works again after %d failures", self.what, self.failures)
        self.failures = 0


async def settle(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait (at most ``_SETTLE`` seconds) until they end; a cancellation
    that got lost (see the module docstring) is repeated, and the loops' flags end them."""
    pending = [t for t in tasks if not t.done()]
    deadline = asyncio.get_running_loop().time() + _SETTLE
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.warning("webhook queue: %d tasks did not stop", len(pending))
            return
        await asyncio.wait(pending, timeout=min(0.1, left))
        pending = [t for t in pending if not t.done()]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _missing_group(exc: Exception) -> bool:
    text = str(exc)
    return isinstance(exc, ResponseError) and ("NOGROUP" in text or "no such key" in text)


class WebhookLeader:
    """Leader election and the leader's work. See the module docstring.

    Args are those of :class:`kanal.webhooks.cluster_queue.RedisWebhookQueue` (which documents
    them), resolved: ``lease``, ``claim_idle``, ``poll`` and ``block`` in seconds. ``noun``
    names what the stream carries in log lines and task names: ``webhook``, or ``hook`` for
    the stream of in-process hooks, whose leader is one of the processes that have hooks.
    """

    def __init__(
        self,
        client: aredis.Redis,
        keys: WebhookKeys,
        *,
        consumer: str,
        dispatcher: Submitter,
        apps: Callable[[str], App | None],
        stats: ClusterWebhookStats,
        lease: float,
        claim_idle: float,
        poll: float,
        block: float,
        max_stream_length: int,
        batch: int,
        noun: str = "webhook",
    ) -> None:
        self.consumer = consumer
        self._noun = noun
        self._client = client
        self._keys = keys
        self._dispatcher = dispatcher
        self._apps = apps
        self._stats = stats
        self._lease = lease
        self._claim_idle_ms = max(1, round(claim_idle * 1000))
        self._poll = poll
        self._block_ms = max(1, round(block * 1000))
        self._maxlen = max_stream_length
        self._batch = batch
        reg = client.register_script
        self._promote_lua, self._lead_lua = reg(lua.PROMOTE), reg(lua.LEAD)
        self._resign_lua, self._inspect_lua = reg(lua.RESIGN), reg(lua.INSPECT)
        self._inflight: set[bytes] = set()  # read, submitted, not yet delivered or dropped
        self._acks: dict[bytes, None] = {}  # finished, not yet acknowledged in Redis
        self._ack_wake = asyncio.Event()
        self._leading = False
        self._term = 0  # changes at every lead / step-down: the leader's loops check it
        self._running = False
        self._closing = False  # keep a lease we hold, take none, read nothing
        self._valid_until = 0.0  # loop time before which our lease surely holds
        self._tasks: list[asyncio.Task[None]] = []  # lease and ack loops
        self._work: list[asyncio.Task[None]] = []  # the leader's reader and promoter

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    @property
    def inflight(self) -> int:
        """Stream entries this node is delivering or has yet to acknowledge."""
        return len(self._inflight) + len(self._acks)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._running = True
        self._tasks = [
            loop.create_task(self._elect(), name=f"kanal-{self._noun}s lease"),
            loop.create_task(self._acker(), name=f"kanal-{self._noun}s ack"),
        ]

    async def stop_reading(self) -> None:
        """Read and promote nothing more; keep the lease and the acknowledgements going."""
        self._closing = True
        self._term += 1
        work, self._work = self._work, []
        await settle(work)

    async def close(self) -> None:
        """Stop everything; acknowledge what finished, hand the rest over, resign."""
        self._running = False
        await self.stop_reading()
        await settle(self._tasks)
        self._leading = False
        try:
            while self._acks:
                await self._ack_some()
            await self._hand_over()
            await self._resign_lua(keys=[self._keys.leader], args=[self.consumer])
        except (RedisError, OSError) as exc:
            self._stats.redis_errors += 1
            log.warning("webhook queue: hand-over at shutdown failed (%s)", exc)

    def halt(self) -> None:
        """Stop every loop at once without any Redis work: what a crash leaves (tests)."""
        self._running = False
        self._leading = False
        self._term += 1
        for task in [*self._tasks, *self._work]:
            task.cancel()

    async def _hand_over(self) -> None:
        """XCLAIM unfinished entries to ourselves with a huge idle time: the next leader's
        XAUTOCLAIM takes them at once instead of after ``claim_idle``."""
        abandoned: list[Any] = sorted(self._inflight)
        if abandoned:
            await self._client.xclaim(
                self._keys.stream, GROUP, self.consumer, 0, abandoned,
                idle=_ABANDONED_IDLE_MS, justid=True,
            )  # fmt: skip
            log.warning("webhooks: %d events left for the next leader", len(abandoned))

    # --- the lease -----------------------------------------------------------------------------

    async def _elect(self) -> None:
        """Take the lease when free, keep it while alive, step down before it can expire."""
        loop = asyncio.get_running_loop()
        tick = self._lease / 3
        while self._running:
            if self._closing and not self._leading:
                await asyncio.sleep(tick)
                continue
            sent = loop.time()
            try:
                async with asyncio.timeout(tick):
                    answer = await self._lead_lua(
                        keys=[self._keys.leader], args=[self.consumer, round(self._lease * 1000)]
                    )
            except (RedisError, OSError, TimeoutError) as exc:
                self._stats.redis_errors += 1
                log.debug("webhook leader lease: %s", exc)
                answer = None
            if answer:
                self._valid_until = sent + self._lease * 5 / 6  # a margin for clock drift
                if answer == 2 and self._leading:  # it had expired: start a new term, which
                    self._step_down("the lease had expired")  # first claims what others left
                if not self._leading and not self._closing:
                    self._lead()
            elif answer == 0 and self._leading:
                self._step_down("another node holds the lease")
            if self._leading and loop.time() >= self._valid_until:
                self._step_down("the lease could not be renewed")
                continue
            pause = tick if not self._leading else min(tick, self._valid_until - loop.time())
            await asyncio.sleep(pause)

    def _lead(self) -> None:
        noun = self._noun
        log.info("%s queue: %s now sends the cluster's %ss", noun, self.consumer, noun)
        self._leading = True
        self._term += 1
        loop = asyncio.get_running_loop()
        self._work = [
            loop.create_task(self._consume(self._term), name=f"kanal-{noun}s consume"),
            loop.create_task(self._promote(self._term), name=f"kanal-{noun}s promote"),
        ]

    def _step_down(self, why: str) -> None:
        noun = self._noun
        log.warning("%s queue: %s stops sending %ss: %s", noun, self.consumer, noun, why)
        self._leading = False
        self._term += 1
        for task in self._work:
            task.cancel()  # the term check ends a loop whose cancellation got lost
        self._work = []

    # --- promoting due holds (webhooks.md §4) --------------------------------------------------

    async def _promote(self, term: int) -> None:
        retry = Retry(f"releasing held {self._noun} events", self._stats)
        keys = [self._keys.stream, self._keys.hold, self._keys.due]
        while self._term == term:
            try:
                promoted, wait_ms = await self._promote_lua(
                    keys=keys, args=[self._maxlen, self._batch]
                )
            except Exception as exc:
                await retry.failed(exc)
                continue
            retry.succeeded()
            self._stats.queued += promoted
            if promoted < self._batch:
                await asyncio.sleep(self._poll if wait_ms < 0 else min(self._poll, wait_ms / 1000))

    # --- reading the stream --------------------------------------------------------------------

    async def _consume(self, term: int) -> None:
        """Deliver what other consumers left behind first, then new entries, in stream order."""
        retry = Retry(f"reading {self._noun} events from Redis", self._stats)
        loop = asyncio.get_running_loop()
        claim_every = max(self._poll, self._claim_idle_ms / 2000)
        next_claim = 0.0
        waiting = False  # other consumers hold entries not yet claimable: read nothing new
        while self._term == term:
            try:
                if waiting or loop.time() >= next_claim:
                    await self._claim()
                    foreign = await self._inspect_lua(
                        keys=[self._keys.stream], args=[GROUP, self.consumer]
                    )
                    waiting = foreign > 0
                    next_claim = loop.time() + claim_every
                if waiting:
                    await asyncio.sleep(self._poll)
                else:
                    await self._read()
            except Exception as exc:
                if _missing_group(exc) and await self._create_group():
                    continue  # first start, or Redis lost its data: not an outage
                await retry.failed(exc)
                continue
            retry.succeeded()

    async def _create_group(self) -> bool:
        """Create the stream's consumer group; false if Redis could not be reached."""
        try:
            await self._client.xgroup_create(self._keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError:  # BUSYGROUP: another node made it
            return True
        except (RedisError, OSError):
            return False
        return True

    async def _read(self) -> None:
        reply: Any = await self._client.xreadgroup(
            GROUP, self.consumer, {self._keys.stream: ">"}, count=self._batch, block=self._block_ms
        )
        if isinstance(reply, dict):  # a RESP3 client without legacy responses
            reply = reply.items()
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                self._take(entry_id, fields)

    async def _claim(self) -> None:
        """XAUTOCLAIM every entry idle for ``claim_idle``: the entries of a node that died or
        left, and this node's own long deliveries, whose idle time this merely resets."""
        start: Any = "0-0"
        while True:
            reply: Any = await self._client.xautoclaim(
                self._keys.stream, GROUP, self.consumer, self._claim_idle_ms, start,
                count=self._batch,
            )  # fmt: skip
            start, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else ()  # Redis 7+ reports trimmed entries
            for entry_id, fields in entries:
                if entry_id not in self._inflight and entry_id not in self._acks:
                    self._stats.claimed += 1
                    self._take(entry_id, fields)
            if deleted:
                self._stats.dropped_trimmed += len(deleted)
                log.error(
                    "webhook queue: %d pending events were trimmed from the stream (backlog "
                    "over max_stream_length) before they could be sent",
                    len(deleted),
                )
            if _text(start) == "0-0":
                return

    def _take(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        """Submit one stream entry to the dispatcher; acknowledged when it is done."""
        self._inflight.add(entry_id)
        try:
            assert fields is not None
            app_id = _text(fields[b"a"])
            event = WebhookEvent(**orjson.loads(fields[b"e"]))
            created = int(float(fields[b"t"])) / 1000
        except Exception:
            log.exception("webhook queue: malformed entry %r dropped", entry_id)
            self._done(entry_id)
            return
        app = self._apps(app_id)
        if app is None:
            log.warning("webhook queue: event %s for unknown app %r dropped", event.name, app_id)
            self._done(entry_id)
            return
        # Not accepted once the dispatcher closed: it stays pending for the next leader.
        self._dispatcher.submit(app, event, created=created, on_done=partial(self._done, entry_id))

    # --- acknowledgements ----------------------------------------------------------------------

    def _done(self, entry_id: bytes) -> None:
        """An entry's fate is final: acknowledge it (from the dispatcher's callbacks)."""
        self._inflight.discard(entry_id)
        self._acks[entry_id] = None
        self._ack_wake.set()

    async def _acker(self) -> None:
        retry = Retry(f"acknowledging {self._noun} events", self._stats)
        while self._running:
            if not self._acks:
                self._ack_wake.clear()
                await self._ack_wake.wait()
                continue
            try:
                await self._ack_some()
            except Exception as exc:
                await retry.failed(exc)
                continue
            retry.succeeded()

    async def _ack_some(self) -> None:
        ids = list(self._acks)[: self._batch * 4]
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xack(self._keys.stream, GROUP, *ids)
            pipe.xdel(self._keys.stream, *ids)
            await pipe.execute()
        for entry_id in ids:
            self._acks.pop(entry_id, None)
