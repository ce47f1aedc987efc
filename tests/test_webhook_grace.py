"""Tests for kanal.protocol.webhook_grace: the pure grace-period rules (webhooks.md §4)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from kanal.protocol import webhooks as hooks
from kanal.protocol.webhook_grace import CLOSING, OPENING, GracePeriod, grace_key
from kanal.protocol.webhooks import WebhookEvent

DELAY = 3.0


def offer(grace: GracePeriod[WebhookEvent], event: WebhookEvent, now: float) -> list[str]:
    return [e.name for e in grace.offer("app", event, event, now)]


def test_keys() -> None:
    assert grace_key("a", hooks.channel_vacated("c")) == ("a", "c", None)
    assert grace_key("a", hooks.member_removed("c", "u")) == ("a", "c", "u")
    assert grace_key("a", hooks.client_event("c", "client-x", "{}", "1.1", None)) is None
    assert grace_key("a", hooks.cache_miss("c")) is None
    assert grace_key("a", hooks.subscription_count("c", 1)) is None
    assert OPENING == {"channel_occupied": "channel_vacated", "member_added": "member_removed"}
    assert CLOSING == {"channel_vacated": "channel_occupied", "member_removed": "member_added"}


def test_opening_and_other_events_pass_straight_through() -> None:
    grace: GracePeriod[WebhookEvent] = GracePeriod(DELAY)
    assert offer(grace, hooks.channel_occupied("c"), 0.0) == ["channel_occupied"]
    assert offer(grace, hooks.member_added("c", "u"), 0.0) == ["member_added"]
    assert offer(grace, hooks.cache_miss("c"), 0.0) == ["cache_miss"]
    assert len(grace) == 0
    assert grace.next_deadline() is None


def test_closing_event_is_held_for_the_delay() -> None:
    grace: GracePeriod[WebhookEvent] = GracePeriod(DELAY)
    assert offer(grace, hooks.channel_vacated("c"), 10.0) == []
    assert grace.next_deadline() == 13.0
    assert grace.release_due(12.999) == []
    assert [e.name for e in grace.release_due(13.0)] == ["channel_vacated"]
    assert grace.next_deadline() is None


def test_reopening_within_the_delay_cancels_both() -> None:
    grace: GracePeriod[WebhookEvent] = GracePeriod(DELAY)
    assert offer(grace, hooks.member_removed("presence-c", "u"), 0.0) == []
    assert offer(grace, hooks.channel_vacated("presence-c"), 0.0) == []
    assert offer(grace, hooks.channel_occupied("presence-c"), 2.9) == []
    assert offer(grace, hooks.member_added("presence-c", "u"), 2.9) == []
    assert len(grace) == 0
    assert grace.release_due(100.0) == []


def test_reopening_after_the_delay_sends_both_in_order() -> None:
    grace: GracePeriod[WebhookEvent] = GracePeriod(DELAY)
    offer(grace, hooks.channel_vacated("c"), 0.0)
    # Not yet released by a timer: the due removal still comes out first.
    assert offer(grace, hooks.channel_occupied("c"), 3.0) == ["channel_vacated", "channel_occupied"]


def test_keys_are_independent() -> None:
    grace: GracePeriod[WebhookEvent] = GracePeriod(DELAY)
    offer(grace, hooks.member_removed("presence-c", "u1"), 0.0)
    offer(grace, hooks.channel_vacated("presence-c"), 0.0)
    assert offer(grace, hooks.member_added("presence-c", "u2"), 1.0) == ["member_added"]
    occupied = hooks.channel_occupied("presence-c")
    assert grace.offer("other-app", occupied, occupied, 1.0) == [occupied]
    assert [e.name for e in grace.release_due(3.0)] == ["member_removed", "channel_vacated"]


def test_zero_delay_disables_the_grace_period() -> None:
    grace: GracePeriod[WebhookEvent] = GracePeriod(0.0)
    assert offer(grace, hooks.channel_vacated("c"), 0.0) == ["channel_vacated"]
    assert offer(grace, hooks.channel_occupied("c"), 0.0) == ["channel_occupied"]


def test_release_all_empties_in_order() -> None:
    grace: GracePeriod[WebhookEvent] = GracePeriod(DELAY)
    offer(grace, hooks.channel_vacated("a"), 0.0)
    offer(grace, hooks.channel_vacated("b"), 1.0)
    assert [e.channel for e in grace.release_all()] == ["a", "b"]
    assert len(grace) == 0


def test_a_malformed_double_closing_loses_nothing() -> None:
    grace: GracePeriod[WebhookEvent] = GracePeriod(DELAY)
    offer(grace, hooks.channel_vacated("c"), 0.0)
    assert offer(grace, hooks.channel_vacated("c"), 1.0) == ["channel_vacated"]
    assert grace.next_deadline() == 4.0


# --- property: strict alternation and the exact cancellation rule ----------------------------


@dataclass(frozen=True)
class Tagged:
    key: int
    opening: bool
    seq: int  # position in the input stream
    at: float  # when it was offered


steps = st.lists(
    st.tuples(
        st.integers(0, 3),  # which key toggles (0-1 channels, 2-3 members of one channel)
        st.floats(0.0, 2 * DELAY, allow_nan=False),  # time since the previous step
        st.booleans(),  # whether a timer fires just before this step
    ),
    max_size=60,
)


def event_for(key: int, opening: bool) -> WebhookEvent:
    if key < 2:
        channel = f"c{key}"
        return hooks.channel_occupied(channel) if opening else hooks.channel_vacated(channel)
    user = f"u{key}"
    return (
        hooks.member_added("presence-p", user)
        if opening
        else hooks.member_removed("presence-p", user)
    )


def expected(inputs: list[Tagged]) -> list[Tagged]:
    """The reference: drop each closing whose next opening comes before its deadline."""
    dropped: set[int] = set()
    for i, item in enumerate(inputs):
        if item.opening:
            continue
        later = [n for n in inputs[i + 1 :] if n.key == item.key]
        if later and later[0].at < item.at + DELAY:
            dropped |= {item.seq, later[0].seq}
    return [item for item in inputs if item.seq not in dropped]


@settings(max_examples=300, deadline=None)
@given(steps)
def test_output_alternates_and_matches_the_reference(
    script: list[tuple[int, float, bool]],
) -> None:
    grace: GracePeriod[Tagged] = GracePeriod(DELAY)
    open_keys: set[int] = set()
    now = 0.0
    inputs: list[Tagged] = []
    out: list[Tagged] = []
    released_at: dict[int, float] = {}
    for seq, (key, gap, tick) in enumerate(script):
        now += gap
        if tick:
            for item in grace.release_due(now):
                released_at[item.seq] = now
                out.append(item)
        opening = key not in open_keys
        open_keys ^= {key}
        item = Tagged(key, opening, seq, now)
        inputs.append(item)
        for got in grace.offer("app", event_for(key, opening), item, now):
            released_at[got.seq] = now
            out.append(got)
    end = now + 10 * DELAY
    for item in grace.release_due(end):
        released_at[item.seq] = end
        out.append(item)

    assert len(grace) == 0
    for key in range(4):
        names = [item.opening for item in out if item.key == key]
        assert names == [i % 2 == 0 for i in range(len(names))]  # opening, closing, ...
    assert sorted(out, key=lambda t: t.seq) == expected(inputs)
    for item in out:
        if item.opening:
            assert released_at[item.seq] == item.at  # never delayed
        else:
            assert released_at[item.seq] >= item.at + DELAY  # never early
