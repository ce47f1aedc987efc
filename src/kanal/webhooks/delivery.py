"""Delivery to one webhook endpoint: queue, batches, signing, POST and retries.

Ownership rule: a :class:`TargetSender` owns one endpoint's queue and the single worker task
that drains it; nothing else touches that queue or sends HTTP requests to that endpoint.
Routing and the grace period live in :mod:`kanal.webhooks.dispatch`, the request format in
:mod:`kanal.protocol.webhooks` and the signature in :mod:`kanal.protocol.signatures`.

One worker per endpoint means a slow or dead endpoint only ever delays its own webhooks, and a
batch is retried before any later batch of the same endpoint is sent, which keeps per-endpoint
(hence per-channel) order (webhooks.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from kanal.config import App, WebhookSettings, WebhookTarget
from kanal.console.recorder import BODY_LIMIT, Recorder
from kanal.metrics import Histogram
from kanal.metrics.registry import ATTEMPT_BUCKETS, DELIVERY_BUCKETS, REQUEST_BUCKETS
from kanal.protocol.signatures import webhook_signature
from kanal.protocol.webhooks import WebhookEvent, webhook_body

__all__ = [
    "RESERVED_HEADERS",
    "Backoff",
    "Countdown",
    "Entry",
    "TargetSender",
    "WebhookClient",
    "WebhookStats",
    "display_url",
    "request_headers",
]

log = logging.getLogger("kanal.webhook_delivery")  # the pre-package name, kept for operators

#: Headers kanal sets itself; an endpoint's custom headers can never replace them
#: (webhooks.md §2), nor the framing headers aiohttp computes.
RESERVED_HEADERS = frozenset(
    {"content-type", "x-pusher-key", "x-pusher-signature", "content-length", "transfer-encoding"}
)


class WebhookClient(Protocol):
    """The HTTP seam (implemented by :mod:`kanal.transport.webhook_client`)."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST the exact ``body`` with exactly these ``headers``, without following redirects;
        return the status code. Raises any exception when the request cannot be made; may be
        cancelled at any point (the caller enforces ``request_timeout``)."""

    async def close(self) -> None:
        """Release connections; called once, after the last ``post``."""


@dataclass(slots=True)
class WebhookStats:
    """Counters for metrics and tests. Every count is in *events*, except ``failed_attempts``."""

    sent: int = 0  #: events delivered with a 2xx answer
    failed_attempts: int = 0  #: POSTs that got a non-2xx answer, a timeout or an error
    dropped_expired: int = 0  #: events given up after the retry window (logged at ERROR)
    dropped_overflow: int = 0  #: oldest events pushed out of a full queue (logged at WARNING)
    dropped_shutdown: int = 0  #: events still undelivered when close() gave up, or emitted after
    #: seconds each POST took to answer (or time out), whatever the outcome
    request_seconds: Histogram = field(default_factory=lambda: Histogram(REQUEST_BUCKETS))
    #: seconds from queued (the grace period over) to a 2xx, per request
    delivery_seconds: Histogram = field(default_factory=lambda: Histogram(DELIVERY_BUCKETS))
    #: POSTs per request until it was delivered or dropped (retry window over)
    attempts: Histogram = field(default_factory=lambda: Histogram(ATTEMPT_BUCKETS))


class Countdown:
    """Calls ``then`` when :meth:`tick` was called ``count`` times (once per target of an
    event: it is finished when every endpoint, or every hook, is done with it)."""

    __slots__ = ("count", "then")

    def __init__(self, count: int, then: Callable[[], None]) -> None:
        self.count = count
        self.then = then

    def tick(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.then()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays: ``min(cap, base * 2**n)`` scaled by a random factor in ``1 ± jitter``
    (webhooks.md §5: 1 s, 2 s, 4 s, … capped at 60 s)."""

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: random.Random) -> float:
        nominal = min(self.cap, self.base * 2.0 ** min(failures, 64))
        return min(self.cap, nominal * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter))


@dataclass(frozen=True, slots=True)
class Entry:
    """One event on its way to one endpoint; ``at`` is the monotonic time it was queued.

    ``created_ms``: when the event happened (left the grace period, on this node or in the
    cluster queue), the Unix time in ms its request body carries as ``time_ms`` (webhooks.md
    §2: the event's time, not the send time); ``None`` means "when the batch is made".
    ``done``: called once the event's fate at this endpoint is final, delivered (2xx) or
    dropped (retry window over, queue overflow); never when :meth:`TargetSender.stop`
    abandons it.
    """

    app: App
    event: WebhookEvent
    at: float
    created_ms: int | None = None
    done: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class _Batch:
    """One request: the same bytes and signature on every attempt (webhooks.md §5)."""

    body: bytes
    headers: dict[str, str]
    size: int
    deadline: float  # monotonic; no retry starts after it
    queued: float  # monotonic: when its oldest event was queued
    app_id: str
    names: tuple[str, ...]  # the events' names, for the console's webhook inspector


def request_headers(app: App, target: WebhookTarget, signature: str) -> dict[str, str]:
    """Custom headers first, then the three webhooks.md §2 headers, which always win.

    ``Content-Type`` is exactly ``application/json``: pusher-http-node rejects a charset.
    The names keep this capitalisation on the wire (pusher-http-php looks them up verbatim).
    """
    headers = {k: v for k, v in target.headers if k.lower() not in RESERVED_HEADERS}
    headers["Content-Type"] = "application/json"
    headers["X-Pusher-Key"] = app.key
    headers["X-Pusher-Signature"] = signature
    return headers


def display_url(url: str) -> str:
    """The URL for log lines: no credentials, query string or fragment (they may hold tokens)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


class TargetSender:
    """The queue and worker of one endpoint of one app.

    Args:
        target: the endpoint.
        settings: batch window and size, queue bound, timeouts, retry window.
        stats: shared counters, updated in place.
        backoff: retry delays.
        wall: Unix time in seconds, for ``time_ms``; ``monotonic``: for every deadline.
        rng: source of retry jitter.
        console: the live console's recorder; every attempt is reported to it.
    """

    def __init__(
        self,
        target: WebhookTarget,
        settings: WebhookSettings,
        stats: WebhookStats,
        *,
        backoff: Backoff,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        rng: random.Random,
        console: Recorder | None = None,
    ) -> None:
        self.target = target
        self._console = console
        self._settings = settings
        self._stats = stats
        self._backoff = backoff
        self._wall = wall
        self._now = monotonic
        self._rng = rng
        self._url = display_url(target.url)
        self._queue: deque[Entry] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0
        self._current: list[Entry] = []  # the batch in flight, for the done callbacks
        self._overflowed = 0
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Events queued or in flight."""
        return len(self._queue) + self._inflight

    # --- producer side (synchronous, never blocks) -------------------------------------------

    def push(self, entry: Entry) -> None:
        """Queue one event; a full queue drops its *oldest* event, counted and logged."""
        if len(self._queue) >= self._settings.max_queue:
            _finish([self._queue.popleft()])
            self._stats.dropped_overflow += 1
            self._overflowed += 1
            if self._overflowed == 1:
                log.warning(
                    "webhook queue for %s is full (%d events): dropping the oldest events",
                    self._url,
                    self._settings.max_queue,
                )
        else:
            self._report_overflow()
        self._queue.append(entry)
        self._idle.clear()
        self._wakeup.set()

    def _report_overflow(self) -> None:
        if self._overflowed:
            log.warning(
                "webhook queue for %s dropped %d events while full", self._url, self._overflowed
            )
            self._overflowed = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, client: WebhookClient) -> None:
        """Start the worker (idempotent); must be called on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(client), name=f"kanal-webhooks {self._url}"
            )

    def drain(self) -> None:
        """Shutting down: stop waiting for batch windows, send what is queued now."""
        self._draining = True
        self._wakeup.set()

    async def wait_idle(self) -> None:
        """Return once nothing is queued or in flight."""
        await self._idle.wait()

    async def stop(self) -> int:
        """Cancel the worker; return how many events it leaves undelivered."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._report_overflow()
        left = self.pending
        self._queue.clear()
        self._current = []  # abandoned, not finished: no done callbacks
        self._inflight = 0
        return left

    # --- the worker --------------------------------------------------------------------------

    async def _run(self, client: WebhookClient) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                batch = await self._next_batch()
                await self._deliver(client, batch)
            except Exception:  # the worker must outlive any bug in one batch
                log.exception("webhook worker for %s failed; batch dropped", self._url)
                self._stats.dropped_expired += self._inflight
            # Not in a ``finally``: when cancelled, stop() counts the batch as undelivered.
            self._inflight = 0
            finished, self._current = self._current, []
            _finish(finished)

    async def _next_batch(self) -> _Batch:
        """webhooks.md §2: one event per request, or for batching apps, what arrives within
        ``batch_window`` of the first one, at most ``max_batch_size``, in occurrence order."""
        first = self._queue[0]
        limit = self._settings.max_batch_size if first.app.batch_webhooks else 1
        if limit > 1:
            await self._gather(first.at + self._settings.batch_window, limit)
        app = self._queue[0].app
        entries: list[Entry] = []
        while self._queue and len(entries) < limit and self._queue[0].app == app:
            entries.append(self._queue.popleft())
        self._inflight = len(entries)
        self._current = entries
        created = [e.created_ms for e in entries if e.created_ms is not None]
        time_ms = min(created) if created else round(self._wall() * 1000)
        body = webhook_body(time_ms, (e.event for e in entries))
        headers = request_headers(app, self.target, webhook_signature(app.secret, body))
        # §5: retry until retry_window after the oldest event in the batch occurred.
        queued = min(e.at for e in entries)
        names = tuple(e.event.name for e in entries)
        deadline = queued + self._settings.retry_window
        return _Batch(body, headers, len(entries), deadline, queued, app.id, names)

    async def _gather(self, until: float, limit: int) -> None:
        while len(self._queue) < limit and not self._draining:
            remaining = until - self._now()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    async def _deliver(self, client: WebhookClient, batch: _Batch) -> None:
        """webhooks.md §5: retry with back-off until the deadline, then drop and log."""
        failures = 0
        stats = self._stats
        while True:
            started = self._now()
            status, problem = await self._attempt(client, batch)
            took = self._now() - started
            stats.request_seconds.observe(took)
            if problem is None:
                stats.sent += batch.size
                stats.delivery_seconds.observe(self._now() - batch.queued)
                stats.attempts.observe(failures + 1)
                self._inspect(batch, status, None, took, failures + 1, None)
                return
            stats.failed_attempts += 1
            delay = self._backoff.delay(failures, self._rng)
            failures += 1
            if self._now() + delay > batch.deadline:
                self._inspect(batch, status, problem, took, failures, None)
                stats.dropped_expired += batch.size
                stats.attempts.observe(failures)
                log.error(
                    "webhook to %s dropped after %d attempt(s), last: %s; %d event(s) lost",
                    self._url,
                    failures,
                    problem,
                    batch.size,
                )
                return
            log.info(
                "webhook to %s failed (%s), attempt %d; retrying in %.2fs",
                self._url,
                problem,
                failures,
                delay,
            )
            self._inspect(batch, status, problem, took, failures, delay)
            await asyncio.sleep(delay)

    async def _attempt(self, client: WebhookClient, batch: _Batch) -> tuple[int | None, str | None]:
        """One POST: its status (None without an answer), and ``None`` on any 2xx, else why
        it failed. Redirects are failures (§5)."""
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                status = await client.post(self.target.url, batch.body, batch.headers)
        except TimeoutError:
            return None, f"no answer within {self._settings.request_timeout}s"
        except Exception as exc:  # connection refused, DNS, TLS, protocol errors, …
            return None, f"{type(exc).__name__}: {exc}"
        return status, None if 200 <= status < 300 else f"HTTP {status}"

    def _inspect(
        self,
        batch: _Batch,
        status: int | None,
        problem: str | None,
        took: float,
        attempt: int,
        retry_in: float | None,
    ) -> None:
        """One attempt for the console's webhook inspector: never the headers (they carry
        the signature and possibly a token), the endpoint without credentials or query."""
        if self._console is None:
            return
        outcome = "delivered" if problem is None else "retrying" if retry_in else "dropped"
        self._console.webhook(
            batch.app_id,
            outcome,
            endpoint=self._url,
            events=list(batch.names),
            body=batch.body[:BODY_LIMIT].decode(errors="replace"),
            truncated=len(batch.body) > BODY_LIMIT,
            status=status,
            error=problem,
            duration_ms=round(took * 1000, 1),
            attempt=attempt,
            next_retry=None if retry_in is None else round((self._wall() + retry_in) * 1000),
        )


def _finish(entries: list[Entry]) -> None:
    """Run the ``done`` callbacks of entries whose fate is final; a failing one is logged."""
    for entry in entries:
        if entry.done is not None:
            try:
                entry.done()
            except Exception:
                log.exception("webhook completion callback failed")
