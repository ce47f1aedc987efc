"""One exposition for a group of worker processes: the sum of each worker's own.

``kanal serve --workers N`` runs N processes behind one port (SO_REUSEPORT), so a scrape
reaches one of them at random. The worker that is scraped asks the others for their own
expositions (:mod:`kanal.transport.worker_metrics`) and answers with the sum computed here.

Why sum expositions instead of prometheus-client's multiprocess mode: that mode keeps every
value in a memory-mapped file per process and turns each ``inc()`` into a locked write into
it, which is exactly what the hot path avoids (docs/metrics.md); its custom collectors, which
read kanal's plain counters, are not shared at all. Asking the live workers at scrape time
keeps the hot path a plain addition and every scrape current (docs/design.md, "Metrics").

Every sample is summed over the workers, gauges included: connections, pending webhooks and
the webhook leader flag add up; ``kanal_channels`` counts a channel once per worker that has
subscribers to it. ``kanal_scrape_workers`` says how many workers are in the sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = ["SCRAPE_WORKERS", "merge_expositions"]

#: The gauge each process reports as ``{state="answered"} 1``; the sum counts the workers.
SCRAPE_WORKERS = "kanal_scrape_workers"

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class _Summed:
    """One family of the merged exposition."""

    def __init__(self, family: Metric) -> None:
        self.name = family.name
        self.documentation = family.documentation
        self.type = family.type
        self.values: dict[SampleKey, float] = {}  # in first-seen order (histogram buckets)

    def add(self, family: Metric) -> None:
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            self.values[key] = self.values.get(key, 0.0) + sample.value

    def metric(self) -> Metric:
        metric = Metric(self.name, self.documentation, self.type)
        for (name, labels), value in self.values.items():
            metric.add_sample(name, dict(labels), value)
        return metric


class _Fixed(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def merge_expositions(texts: Sequence[str], missing: int = 0) -> bytes:
    """Sum the samples of ``texts`` (each one process's exposition) by name and labels;
    ``missing``: workers that did not answer, reported as ``kanal_scrape_workers{state=
    "missing"}``."""
    families: dict[str, _Summed] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            summed = families.get(family.name)
            if summed is None:
                summed = families[family.name] = _Summed(family)
            summed.add(family)
    workers = families.get(SCRAPE_WORKERS)
    if workers is not None:
        key = (SCRAPE_WORKERS, (("state", "missing"),))
        workers.values[key] = workers.values.get(key, 0.0) + missing
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families[name].metric() for name in sorted(families)))
    return generate_latest(registry)
