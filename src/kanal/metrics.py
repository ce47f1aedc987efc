"""Process metrics in the Prometheus text exposition format (``GET /metrics``).

Ownership rule: counters live here; their owners increment them (the hub for connections and
deliveries, the HTTP API for requests) and gauges are read from their owners when scraped.
Counting a broadcast costs one addition per broadcast, never one per recipient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Metrics"]

Gauge = Callable[[], float]


@dataclass
class Metrics:
    """Monotonic counters plus gauges sampled at scrape time."""

    counters: dict[str, float] = field(default_factory=dict)
    labelled: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    gauges: dict[str, Gauge] = field(default_factory=dict)
    sampled: dict[tuple[str, str], Gauge] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)

    def describe(self, name: str, text: str) -> None:
        self.help[name] = text

    def inc(self, name: str, amount: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + amount

    def inc_labelled(self, name: str, labels: dict[str, str], amount: float = 1.0) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.labelled[key] = self.labelled.get(key, 0.0) + amount

    def gauge(self, name: str, read: Gauge, text: str) -> None:
        self.gauges[name] = read
        self.help[name] = text

    def sampled_counter(self, name: str, read: Gauge, text: str, labels: str = "") -> None:
        """A counter owned elsewhere (e.g. webhook stats), read at scrape time."""
        self.sampled[(name, labels)] = read
        self.help[name] = text

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self.counters):
            lines += self._header(name, "counter")
            lines.append(f"{name} {self.counters[name]:g}")
        seen: set[str] = set()
        for (name, labels), value in sorted(self.labelled.items()):
            if name not in seen:
                seen.add(name)
                lines += self._header(name, "counter")
            rendered = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{rendered}}} {value:g}")
        for name, label_text in sorted(self.sampled):
            if name not in seen:
                seen.add(name)
                lines += self._header(name, "counter")
            suffix = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{name}{suffix} {self.sampled[(name, label_text)]():g}")
        for name in sorted(self.gauges):
            lines += self._header(name, "gauge")
            lines.append(f"{name} {self.gauges[name]():g}")
        return "\n".join(lines) + "\n"

    def _header(self, name: str, kind: str) -> list[str]:
        text = self.help.get(name)
        return ([f"# HELP {name} {text}"] if text else []) + [f"# TYPE {name} {kind}"]
