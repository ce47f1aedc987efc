"""Counters kept as plain Python numbers, turned into Prometheus metric families when scraped.

Ownership rule: the numbers live here, or in their owners' stats objects registered here
(webhook and hook stats, gauges such as the open channels). Each has one writer: the hub
counts connections, messages, deliveries and fan-out times; the HTTP API its requests and
their latency; a webhook sender its attempts. Nothing else writes them.

Why not prometheus-client's ``Counter`` on the hot path: its ``inc()`` takes a lock and goes
through a value object, several times the cost of adding to an attribute, and fan-out must
stay at one addition per broadcast (never one per recipient, docs/metrics.md). So the owners
add to attributes, and :class:`_Collector` (a ``prometheus_client.registry.Collector``) reads
them into metric families only when someone scrapes; prometheus-client writes the exposition.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kanal.metrics.group import SCRAPE_WORKERS

__all__ = [
    "ATTEMPT_BUCKETS",
    "CONTENT_TYPE",
    "DELIVERY_BUCKETS",
    "FANOUT_BUCKETS",
    "HTTP_BUCKETS",
    "REQUEST_BUCKETS",
    "AppCounters",
    "Histogram",
    "Metrics",
]

#: The Content-Type of what ``generate_latest`` writes, as the installed prometheus-client
#: names it (its text format's version differs between releases).
CONTENT_TYPE: str = CONTENT_TYPE_LATEST

# Bucket upper bounds, in seconds except ATTEMPT_BUCKETS. A fan-out is framing once plus one
# buffer append per subscriber: microseconds for a few, milliseconds for tens of thousands.
FANOUT_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1)
# An HTTP API call: sub-millisecond on one node, Redis round trips in a cluster.
HTTP_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# One webhook POST, up to request_timeout (10 s by default).
REQUEST_BUCKETS = (5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Queued to delivered: the batch window, the POST, and the retries' back-off (up to 300 s).
DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# POSTs per webhook request: back-off 1, 2, 4, ... 60 s fits about 10 in the retry window.
ATTEMPT_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0)

Read = Callable[[], float]
#: Bucket bounds as Prometheus's own clients write them ("+Inf", "0.005", "1e-05").
_le: Callable[[float], str] = floatToGoString
Kind = Literal["counter", "gauge", "histogram"]


class Histogram:
    """Fixed buckets counted in a list: ``observe`` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal")
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them: cumulative, ending with +Inf."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            buckets.append((_le(bound), running))
        return buckets


class AppCounters:
    """One app's counters on this process; the hub adds to them (docs/metrics.md)."""

    __slots__ = ("closed", "deliveries", "opened", "received")

    def __init__(self) -> None:
        self.opened = 0  #: connections admitted
        self.closed = 0  #: connections cleaned up (open connections: opened - closed)
        self.received = 0  #: text frames received from clients
        self.deliveries = 0  #: frames handed to subscribers, one addition per broadcast


@dataclass
class _Family:
    """A family whose samples other objects own, registered with :meth:`Metrics.counter`,
    :meth:`Metrics.gauge` or :meth:`Metrics.histogram`."""

    kind: Kind
    text: str
    labels: tuple[str, ...]
    counters: list[tuple[tuple[str, ...], Read]] = field(default_factory=list)
    histograms: list[tuple[tuple[str, ...], Histogram]] = field(default_factory=list)


class Metrics:
    """The process's metrics: built-in counters plus families registered by their owners."""

    def __init__(self) -> None:
        #: by app id; bounded by the configured apps (only admitted connections and
        #: authenticated API calls count under an app)
        self.apps: defaultdict[str, AppCounters] = defaultdict(AppCounters)
        self.presence_reconciled = 0
        self.fanout = Histogram(FANOUT_BUCKETS)
        #: HTTP API calls by (app id, endpoint, status); app "" when no app was identified
        self.http_requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.http_latency: dict[str, Histogram] = {}
        self._families: dict[str, _Family] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))

    # --- for the owners -------------------------------------------------------------------

    def request(self, app_id: str, endpoint: str, status: int, seconds: float) -> None:
        """One HTTP API call, answered in ``seconds``."""
        self.http_requests[(app_id, endpoint, status)] += 1  # the label is made when scraped
        latency = self.http_latency.get(endpoint)
        if latency is None:
            latency = self.http_latency[endpoint] = Histogram(HTTP_BUCKETS)
        latency.observe(seconds)

    def counter(self, name: str, text: str, read: Read, **labels: str) -> None:
        """A counter owned elsewhere (webhook stats, ...), read at scrape time. Registering
        the same name again adds a sample with other label values."""
        self._family(name, "counter", text, labels).counters.append((tuple(labels.values()), read))

    def gauge(self, name: str, text: str, read: Read, **labels: str) -> None:
        self._family(name, "gauge", text, labels).counters.append((tuple(labels.values()), read))

    def histogram(self, name: str, text: str, histogram: Histogram, **labels: str) -> None:
        family = self._family(name, "histogram", text, labels)
        family.histograms.append((tuple(labels.values()), histogram))

    def _family(self, name: str, kind: Kind, text: str, labels: dict[str, str]) -> _Family:
        family = self._families.setdefault(name, _Family(kind, text, tuple(labels)))
        if (family.kind, family.labels) != (kind, tuple(labels)):
            raise ValueError(f"{name} registered as {family.kind}{family.labels} already")
        return family

    # --- for the scrape ---------------------------------------------------------------------

    def render(self) -> bytes:
        """This process's metrics in the Prometheus text format."""
        return generate_latest(self._registry)

    async def scrape(self) -> bytes:
        """:meth:`render` as ``GET /metrics`` calls it (a worker group's scrape awaits the
        other workers: :mod:`kanal.transport.worker_metrics`)."""
        return self.render()

    def collect(self) -> Iterator[Metric]:
        yield from self._builtin()
        for name, family in sorted(self._families.items()):
            yield _registered(name, family)

    def _builtin(self) -> Iterator[Metric]:
        apps = sorted(self.apps.items())
        per_app = (
            ("kanal_connections_opened_total", "Connections admitted", "opened"),
            ("kanal_connections_closed_total", "Connections cleaned up", "closed"),
            ("kanal_messages_received_total", "Text frames received from clients", "received"),
            ("kanal_deliveries_total", "Frames handed to local subscribers", "deliveries"),
        )
        for name, text, attribute in per_app:
            counter = CounterMetricFamily(name, text, labels=["app"])
            for app_id, counters in apps:
                counter.add_metric([app_id], getattr(counters, attribute))
            yield counter
        connections = GaugeMetricFamily(
            "kanal_connections", "Open WebSocket connections", labels=["app"]
        )
        for app_id, counters in apps:
            connections.add_metric([app_id], counters.opened - counters.closed)
        yield connections
        yield CounterMetricFamily(
            "kanal_presence_reconciled_total",
            "Presence member events sent to local subscribers by reconciliation with Redis",
            value=self.presence_reconciled,
        )
        fanout = HistogramMetricFamily(
            "kanal_broadcast_fanout_seconds",
            "Time to frame a broadcast and hand it to every local subscriber",
        )
        fanout.add_metric([], self.fanout.cumulative(), self.fanout.total)
        yield fanout
        requests = CounterMetricFamily(
            "kanal_http_requests_total",
            "HTTP API requests by app, handler and status",
            labels=["app", "endpoint", "status"],
        )
        for (app_id, endpoint, status), count in sorted(self.http_requests.items()):
            requests.add_metric([app_id, endpoint, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "kanal_http_request_duration_seconds",
            "HTTP API request handling time by handler",
            labels=["endpoint"],
        )
        for endpoint, histogram in sorted(self.http_latency.items()):
            latency.add_metric([endpoint], histogram.cumulative(), histogram.total)
        yield latency
        # This process alone; kanal.metrics.group sums it over the workers of a group.
        workers = GaugeMetricFamily(
            SCRAPE_WORKERS, "Worker processes summed in this scrape, by state", labels=["state"]
        )
        workers.add_metric(["answered"], 1)
        workers.add_metric(["missing"], 0)
        yield workers


def _registered(name: str, family: _Family) -> Metric:
    labels = list(family.labels)
    if family.kind == "histogram":
        histograms = HistogramMetricFamily(name, family.text, labels=labels)
        for values, histogram in family.histograms:
            histograms.add_metric(list(values), histogram.cumulative(), histogram.total)
        return histograms
    metric: CounterMetricFamily | GaugeMetricFamily
    if family.kind == "counter":
        metric = CounterMetricFamily(name, family.text, labels=labels)
    else:
        metric = GaugeMetricFamily(name, family.text, labels=labels)
    for values, read in family.counters:
        metric.add_metric(list(values), read())
    return metric


class _Collector(Collector):
    """What prometheus-client's registry asks at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()
