"""Tests for kanal.protocol.flood: the per-IP token buckets and which address is counted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kanal.protocol.flood import ConnectionRate, client_address, rate_key


def test_a_burst_of_the_rate_then_refusals() -> None:
    rate = ConnectionRate(3)
    assert [rate.allow("10.0.0.1", 100.0) for _ in range(5)] == [True, True, True, False, False]
    assert rate.allow("10.0.0.2", 100.0)  # another address has its own bucket


def test_tokens_come_back_at_the_rate() -> None:
    rate = ConnectionRate(2)
    assert rate.allow("a", 0.0) and rate.allow("a", 0.0)
    assert not rate.allow("a", 0.1)  # 0.2 tokens back: not a whole one
    assert rate.allow("a", 0.6)  # 0.1 + 0.5 s * 2/s = 1.2 tokens
    assert not rate.allow("a", 0.6)


def test_a_client_retrying_waits_for_a_whole_token() -> None:
    rate = ConnectionRate(1)
    assert rate.allow("a", 0.0)
    assert not any(rate.allow("a", step * 0.09) for step in range(1, 11))  # up to 0.9 s
    assert rate.allow("a", 1.0)


def test_idle_buckets_are_dropped() -> None:
    rate = ConnectionRate(5)
    for n in range(100):
        rate.allow(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(rate) == 100
    assert rate.allow("10.9.9.9", 1.0)  # a second later every other bucket is full again
    assert len(rate) == 1


def test_memory_is_capped_even_within_one_second() -> None:
    rate = ConnectionRate(1, max_tracked=50)
    for n in range(500):
        rate.allow(f"addr-{n}", n / 1000)
    assert len(rate) == 50


def test_zero_is_no_limiter() -> None:
    with pytest.raises(ValueError):
        ConnectionRate(0)


@given(
    st.integers(1, 20),
    st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 0.5)), max_size=200),
)
def test_never_more_than_the_burst_plus_the_rate(
    per_second: int, attempts: list[tuple[str, float]]
) -> None:
    rate = ConnectionRate(per_second)
    now = 0.0
    allowed: dict[str, int] = {}
    for address, gap in attempts:
        now += gap
        if rate.allow(address, now):
            allowed[address] = allowed.get(address, 0) + 1
    for count in allowed.values():
        assert count <= per_second + per_second * now + 1e-9


def test_ipv6_is_counted_per_64() -> None:
    assert (
        rate_key("2001:db8:1:2:3:4:5:6")
        == rate_key("2001:db8:1:2:ffff::1")
        == ("2001:db8:1:2::/64")
    )
    assert rate_key("2001:db8:1:3::1") != rate_key("2001:db8:1:2::1")
    assert rate_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert rate_key("10.1.2.3") == "10.1.2.3"
    assert rate_key("fe80::1%eth0") == "fe80::/64"
    assert rate_key("not:an:address") == "not:an:address"
    rate = ConnectionRate(1)
    assert rate.allow("2001:db8::1", 0.0)
    assert not rate.allow("2001:db8::2", 0.0)  # the same /64


def test_forwarded_for_is_believed_only_when_trusted() -> None:
    assert client_address("10.0.0.1", "203.0.113.7, 10.0.0.1", False) == "10.0.0.1"
    assert client_address("10.0.0.1", "203.0.113.7, 10.0.0.1", True) == "203.0.113.7"
    assert client_address("10.0.0.1", " 2001:db8::1 ", True) == "2001:db8::1"
    assert client_address("10.0.0.1", "garbage, 203.0.113.7", True) == "10.0.0.1"
    assert client_address("10.0.0.1", None, True) == "10.0.0.1"
    assert client_address("10.0.0.1", "", True) == "10.0.0.1"
