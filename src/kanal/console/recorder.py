"""Per-app rings of console records, watch leases and message rates (see the package docs)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

__all__ = ["Page", "Record", "Recorder"]

Record = dict[str, Any]

#: Events kept per app for the event log, and deliveries for the webhook inspector. A record is
#: a few hundred bytes (a webhook body is cut at BODY_LIMIT), so an app's rings stay under 1 MiB.
EVENT_RING = 1000
WEBHOOK_RING = 200
BODY_LIMIT = 4096
#: Rate samples, one per second: the rate shown is over the last few seconds.
_SAMPLES = 4


class _Ring:
    """A bounded log with sequence numbers, so a reader can ask for "everything after n" and
    learn how many records it missed when the ring wrapped in between."""

    __slots__ = ("items", "next_seq")

    def __init__(self, size: int) -> None:
        self.items: deque[Record] = deque(maxlen=size)
        self.next_seq = 1

    def add(self, record: Record) -> None:
        record["seq"] = self.next_seq
        self.next_seq += 1
        self.items.append(record)

    def after(self, seq: int) -> tuple[list[Record], int]:
        """Records with a sequence number above ``seq``, and how many of those are gone."""
        if seq >= self.next_seq:  # a cursor from before a restart: start again
            seq = 0
        if not self.items:
            return [], 0
        first = self.items[0]["seq"]
        lost = max(0, first - seq - 1)
        return list(islice(self.items, max(0, seq - first + 1), None)), lost


@dataclass(slots=True)
class _Watch:
    """An app some console is looking at: its lease and message counters."""

    deadline: float
    received: int = 0
    delivered: int = 0
    samples: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=_SAMPLES))


@dataclass(frozen=True, slots=True)
class Page:
    """One answer to a console's poll: new records of both rings, the cursors to ask with
    next time, and how many records the ring dropped since the previous cursor."""

    events: list[Record]
    webhooks: list[Record]
    next_event: int
    next_webhook: int
    lost: int

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "webhooks": self.webhooks,
            "next_event": self.next_event,
            "next_webhook": self.next_webhook,
            "lost": self.lost,
        }


class Recorder:
    """What the console shows of one node. Reporters check :attr:`watching` first.

    Args:
        lease: seconds an app stays watched after a console's last poll.
        monotonic: the clock of leases and rates; ``wall``: Unix time for records.
    """

    def __init__(
        self,
        *,
        lease: float = 30.0,
        event_ring: int = EVENT_RING,
        webhook_ring: int = WEBHOOK_RING,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.watching = False
        self.lease = lease
        self._event_ring = event_ring
        self._webhook_ring = webhook_ring
        self._now = monotonic
        self._wall = wall
        self._watched: dict[str, _Watch] = {}
        self._events: dict[str, _Ring] = {}
        self._webhooks: dict[str, _Ring] = {}
        self._wakers: dict[str, asyncio.Event] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False  # the node is stopping: polls are answered at once

    # --- reports (the hub, the service, the webhook pipeline) ------------------------------

    def event(self, app_id: str, kind: str, **fields: Any) -> None:
        """One event for the log of a watched app (others are not recorded)."""
        if app_id not in self._watched:
            return
        ring = self._events.get(app_id)
        if ring is None:
            ring = self._events[app_id] = _Ring(self._event_ring)
        ring.add({"kind": kind, "time": round(self._wall() * 1000), **fields})
        self._wake(app_id)

    def received(self, app_id: str) -> None:
        """One message from a client of a watched app."""
        watch = self._watched.get(app_id)
        if watch is not None:
            watch.received += 1

    def delivered(self, app_id: str, count: int) -> None:
        """``count`` messages written to connections of a watched app."""
        watch = self._watched.get(app_id)
        if watch is not None:
            watch.delivered += count

    def webhook(self, app_id: str, kind: str, **fields: Any) -> None:
        """A webhook event held, cancelled or delivered: recorded whether or not anyone
        watches (see the package docs)."""
        ring = self._webhooks.get(app_id)
        if ring is None:
            ring = self._webhooks[app_id] = _Ring(self._webhook_ring)
        ring.add({"kind": kind, "time": round(self._wall() * 1000), **fields})
        self._wake(app_id)

    # --- the console's side ---------------------------------------------------------------

    def watch(self, app_id: str) -> None:
        """A console polled ``app_id``: record its events for another :attr:`lease` seconds."""
        if self._closed:
            return
        now = self._now()
        deadline = now + self.lease
        watch = self._watched.get(app_id)
        if watch is None:
            watch = self._watched[app_id] = _Watch(deadline)
            watch.samples.append((now, 0, 0))  # counting starts now
        else:
            watch.deadline = deadline
        self.watching = True
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(1.0, self.tick)

    def rates(self, app_id: str) -> tuple[float, float] | None:
        """Messages in and out per second over the last few seconds; None until measured."""
        watch = self._watched.get(app_id)
        if watch is None or len(watch.samples) < 2:
            return None
        (t0, in0, out0), (t1, in1, out1) = watch.samples[0], watch.samples[-1]
        span = t1 - t0
        return ((in1 - in0) / span, (out1 - out0) / span) if span > 0 else None

    def page(self, app_id: str, event_after: int, webhook_after: int) -> Page:
        events, lost = self._read(self._events, app_id, event_after)
        webhooks, lost_hooks = self._read(self._webhooks, app_id, webhook_after)
        return Page(
            events,
            webhooks,
            self._cursor(self._events, app_id),
            self._cursor(self._webhooks, app_id),
            lost + lost_hooks,
        )

    async def wait(self, app_id: str, event_after: int, webhook_after: int, wait: float) -> Page:
        """Long poll: :meth:`page` as soon as it has something, or after ``wait`` seconds."""
        page = self.page(app_id, event_after, webhook_after)
        if page.events or page.webhooks or page.lost or wait <= 0 or self._closed:
            return page
        waker = self._wakers.get(app_id)
        if waker is None:
            waker = self._wakers[app_id] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waker.wait(), wait)
        return self.page(app_id, event_after, webhook_after)

    def polling(self, app_id: str) -> bool:
        """Whether a long poll for ``app_id`` is waiting now."""
        return app_id in self._wakers

    # --- internals ------------------------------------------------------------------------

    def _wake(self, app_id: str) -> None:
        waker = self._wakers.pop(app_id, None)
        if waker is not None:
            waker.set()

    @staticmethod
    def _read(rings: dict[str, _Ring], app_id: str, after: int) -> tuple[list[Record], int]:
        ring = rings.get(app_id)
        return ([], 0) if ring is None else ring.after(after)

    @staticmethod
    def _cursor(rings: dict[str, _Ring], app_id: str) -> int:
        ring = rings.get(app_id)
        return 0 if ring is None else ring.next_seq - 1

    def tick(self) -> None:
        """Once a second while watched: sample the counters, end expired leases."""
        now = self._now()
        for app_id, watch in list(self._watched.items()):
            if watch.deadline <= now:
                del self._watched[app_id]
            else:
                watch.samples.append((now, watch.received, watch.delivered))
        self.watching = bool(self._watched)
        if self._timer is not None:  # called early (tests): keep one timer
            self._timer.cancel()
        self._timer = (
            asyncio.get_running_loop().call_later(1.0, self.tick) if self.watching else None
        )

    async def close(self) -> None:
        """Stop recording and answer every waiting poll now, and later ones at once (the node
        is stopping: a poll must not hold up the end of the drain)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watched.clear()
        self.watching = False
        for app_id in list(self._wakers):
            self._wake(app_id)
