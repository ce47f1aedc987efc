"""The per-IP limit on new connections: ``[server] max_connections_per_ip_per_second``.

Pure: the transports pass the client's address and the time; :class:`ConnectionRate` answers
whether one more connection from that address may start now. Over the limit the transport
refuses it like every other refusal, ``pusher:error`` then close 4100, which pusher-js
answers by backing off (protocol.md §1.2, close codes 4100-4199) instead of retrying at once.

Who the client is (:func:`client_address`): the socket's peer, or with ``trust_proxy_headers``
the first address of ``X-Forwarded-For``, which the proxy in front of kanal must set itself
(docs/deployment.md). Addresses are counted as they are, except IPv6 ones, which are counted
per /64 network: one host usually holds a whole /64, so counting single IPv6 addresses
would let it open as many connections as it has addresses.

Memory: one token bucket per address seen within the last second. A bucket left alone for
a second is full again, which is what a missing bucket means, so it is dropped; the buckets
are kept in order of last use, so dropping the stale ones costs O(1) per connection and no
timer. :data:`MAX_TRACKED` caps the table even against a flood from more addresses than that
within one second: the least recently used bucket is then forgotten first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

__all__ = ["MAX_TRACKED", "ConnectionRate", "client_address", "rate_key"]

#: Most addresses tracked at once (about 100 bytes each).
MAX_TRACKED = 100_000


def client_address(peer: str, forwarded_for: str | None, trust_proxy_headers: bool) -> str:
    """The address a connection is counted under: ``peer`` (the socket's), or with
    ``trust_proxy_headers`` the first address of ``X-Forwarded-For`` when it is one."""
    if trust_proxy_headers and forwarded_for:
        first = forwarded_for.split(",", 1)[0].strip()
        try:
            return str(ipaddress.ip_address(first))
        except ValueError:
            pass  # not an address (a misconfigured proxy): count the peer instead
    return peer


def rate_key(address: str) -> str:
    """IPv4 addresses as they are; IPv6 ones by their /64 (IPv4-mapped ones as IPv4)."""
    if ":" not in address:
        return address
    try:
        parsed = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(ipaddress.IPv6Network((parsed, 64), strict=False))


class ConnectionRate:
    """Token buckets per address: ``per_second`` tokens, refilled at ``per_second`` a second.

    A burst of ``per_second`` connections is allowed at once (a page that opens a few
    sockets, a NAT with several users), then ``per_second`` a second on average.
    """

    __slots__ = ("_buckets", "_max_tracked", "per_second")

    def __init__(self, per_second: int, max_tracked: int = MAX_TRACKED) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive (0 means: no limiter at all)")
        self.per_second = per_second
        self._max_tracked = max_tracked
        # address -> (tokens left, when they were counted); oldest use first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, address: str, now: float) -> bool:
        """Take one token for a new connection from ``address``; False when none is left.
        ``now`` is monotonic seconds."""
        self._expire(now)
        key = rate_key(address)
        rate = float(self.per_second)
        bucket = self._buckets.pop(key, None)
        tokens = rate if bucket is None else min(rate, bucket[0] + (now - bucket[1]) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)  # to the end: the most recently used
        if len(self._buckets) > self._max_tracked:
            self._buckets.popitem(last=False)
        return allowed

    def _expire(self, now: float) -> None:
        """Drop the buckets untouched for a second: full again, as if never used."""
        buckets = self._buckets
        while buckets:
            key = next(iter(buckets))
            if now - buckets[key][1] < 1.0:
                return
            del buckets[key]
