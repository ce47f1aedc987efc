"""The grace period of removal webhooks, as pure state (webhooks.md §4).

Ownership rule: this module alone decides *whether and when* a ``channel_vacated`` or
``member_removed`` webhook is released, and which ``channel_occupied`` / ``member_added``
webhook it cancels. It never reads a clock and never schedules anything: ``now`` is a parameter
of every call, and the caller (:mod:`kanal.webhooks.dispatch`) arranges to call
:meth:`GracePeriod.release_due` at :meth:`GracePeriod.next_deadline`.

Why the output strictly alternates: the hub emits, per ``(app, channel)`` and per
``(app, channel, user_id)``, an alternating stream ``opening, closing, opening, …``. A closing
event is only ever *held*; the next opening event of the same key either finds it still held and
drops both (a removal that was undone, so nothing happened), or finds nothing held, because the
closing event was already released, and passes. Dropping an adjacent ``closing, opening`` pair
from an alternating sequence leaves it alternating, and delaying a closing event never moves it
past the opening event that follows it. So correctness follows from the hub's stream alone.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from kanal.protocol.webhooks import WebhookEvent

__all__ = ["CLOSING", "OPENING", "GraceKey", "GracePeriod", "grace_key"]

#: Opening event name -> the closing event name it cancels (webhooks.md §4).
OPENING = {"channel_occupied": "channel_vacated", "member_added": "member_removed"}
#: Closing event name -> the opening event name that cancels it.
CLOSING = {closing: opening for opening, closing in OPENING.items()}

#: ``(app_id, channel, user_id)``; ``user_id`` is ``None`` for occupancy events.
GraceKey = tuple[str, str, str | None]

T = TypeVar("T")


def grace_key(app_id: str, event: WebhookEvent) -> GraceKey | None:
    """The key an opening and its closing event share, ``None`` for other events.

    Occupancy and membership events never share a key: only member events carry a ``user_id``
    (webhooks.md §3), and occupancy keys always use ``None``.
    """
    if event.name in ("channel_occupied", "channel_vacated"):
        return (app_id, event.channel, None)
    if event.name in ("member_added", "member_removed"):
        return (app_id, event.channel, event.user_id or "")
    return None


@dataclass(frozen=True, slots=True)
class _Held(Generic[T]):
    item: T
    deadline: float


class GracePeriod(Generic[T]):
    """Holds closing events for ``delay`` seconds; an opening event cancels a held one.

    ``T`` is whatever the caller wants back (kanal passes ``(app, event)`` pairs). A ``delay``
    of 0 or less disables the grace period: every event passes straight through.
    """

    def __init__(self, delay: float) -> None:
        self._delay = delay
        # Insertion order is deadline order: the delay is constant and ``now`` never goes
        # back, so the head is always the next one due.
        self._held: OrderedDict[GraceKey, _Held[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def offer(self, app_id: str, event: WebhookEvent, item: T, now: float) -> list[T]:
        """Take one event from the hub; return the items to send now, in order.

        Items that fell due by ``now`` come first, so the output keeps occurrence order.
        """
        out = self.release_due(now)
        key = grace_key(app_id, event)
        if key is None or self._delay <= 0:
            out.append(item)
        elif event.name in CLOSING:
            self._hold(key, item, now, out)
        elif self._held.pop(key, None) is None:
            out.append(item)  # nothing held: a genuine opening (§4)
        # else: the removal was undone within the delay, so neither webhook is sent (§4)
        return out

    def _hold(self, key: GraceKey, item: T, now: float, out: list[T]) -> None:
        earlier = self._held.pop(key, None)
        if earlier is not None:
            # Two closings in a row can only come from a malformed stream; pass the first
            # on rather than lose it.
            out.append(earlier.item)
        self._held[key] = _Held(item, now + self._delay)

    def release_due(self, now: float) -> list[T]:
        """Remove and return every held item whose deadline is ``<= now``, oldest first."""
        out: list[T] = []
        while self._held:
            key, held = next(iter(self._held.items()))
            if held.deadline > now:
                break
            del self._held[key]
            out.append(held.item)
        return out

    def release_all(self) -> list[T]:
        """Remove and return every held item, oldest first (used when shutting down)."""
        out = [held.item for held in self._held.values()]
        self._held.clear()
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`release_due` will next return something, or ``None`` if nothing is held."""
        for held in self._held.values():
            return held.deadline
        return None
