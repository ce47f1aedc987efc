"""Process metrics, exposed by prometheus-client (``GET /metrics``, docs/metrics.md).

:mod:`kanal.metrics.registry` holds the counters as plain Python numbers that their owners
add to, and reads them into Prometheus metric families only when scraped;
:mod:`kanal.metrics.group` sums the expositions of the worker processes of ``kanal serve
--workers N``, so that one scrape reports the whole group.
"""

from kanal.metrics.group import merge_expositions
from kanal.metrics.registry import (
    CONTENT_TYPE,
    AppCounters,
    Histogram,
    Metrics,
)

__all__ = ["CONTENT_TYPE", "AppCounters", "Histogram", "Metrics", "merge_expositions"]
