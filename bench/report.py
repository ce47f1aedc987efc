"""Collect runs, reduce them to medians and ratios, write JSON and Markdown.

A row of the report is one (scenario, case, metric); each server's cell is the median over its
*valid* runs (see :mod:`bench.measure`), or over all its runs, marked ``*``, when none was
valid. The ratios are kanal's median over soketi's and over the floor server's from the same
benchmark invocation, where both ran. The "valid" column counts the valid runs of each
server; a row is fully valid when all are. Scenarios a server cannot run are listed as skipped.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import Run

__all__ = ["METRICS", "RATIOS", "Report"]

#: row key -> the server kanal is divided by, in the JSON rows and the Markdown columns
RATIOS = {"ratio": "soketi", "ratio_floor": "floor"}

#: metric -> (label, unit, which direction is better, shown in the Markdown table)
METRICS: dict[str, tuple[str, str, str, bool]] = {
    "deliveries_per_s": ("deliveries/s", "/s", "higher", True),
    "triggers_per_s": ("triggers/s", "/s", "higher", True),
    "server_cpu": ("server CPU", "cores", "lower", True),
    "deliveries_per_cpu_s": ("deliveries per CPU-second", "/cpu-s", "higher", True),
    "delivered_ratio": ("delivered/expected", "%", "higher", True),
    "p50_ms": ("p50 latency (kernel receipt stamp)", "ms", "lower", True),
    "p99_ms": ("p99 latency (kernel receipt stamp)", "ms", "lower", True),
    "max_ms": ("max latency (kernel receipt stamp)", "ms", "lower", True),
    "p50_user_ms": ("p50 latency (user-space receipt)", "ms", "lower", True),
    "p99_user_ms": ("p99 latency (user-space receipt)", "ms", "lower", True),
    "max_user_ms": ("max latency (user-space receipt)", "ms", "lower", False),
    "merged_ratio": ("events read with a later one (stamp may be late)", "%", "lower", True),
    "unstamped_reads": ("reads without a kernel stamp", "", "lower", False),
    "clock_step_us": ("CLOCK_REALTIME step during the run", "us", "lower", False),
    "achieved_rate": ("achieved trigger rate", "ev/s", "higher", False),
    "connect_seconds": ("connect + subscribe time", "s", "lower", True),
    "connects_per_s": ("connects/s", "/s", "higher", True),
    "connections_held": ("connections held after the run", "", "higher", True),
    "listen_overflows": ("accept-queue overflows (SYN drops)", "", "lower", True),
    "settle_seconds": ("presence join storm settles in", "s", "lower", True),
    "bytes_per_connection": ("RSS per connection", "bytes", "lower", True),
    "connections_in_2gib": ("connections in 2 GiB", "", "higher", True),
    "rss_before_mib": ("RSS before", "MiB", "lower", False),
    "rss_after_mib": ("RSS after", "MiB", "lower", True),
    "generator_cpu": ("generator CPU", "cores", "lower", True),
    "foreign_cpu": ("other processes' CPU", "cores", "lower", False),
    "http_reconnects": ("HTTP reconnects", "", "lower", False),
    "http_errors": ("HTTP requests not answered 2xx", "", "lower", False),
}


@dataclass
class Report:
    meta: dict[str, Any]
    runs: dict[tuple[str, str, str], list[Run]] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, scenario: str, case: str, server: str, run: Run) -> None:
        if (scenario, case) not in self.order:
            self.order.append((scenario, case))
        self.runs.setdefault((scenario, case, server), []).append(run)

    def skip(self, scenario: str, server: str, reason: str) -> None:
        self.skipped.append(f"{scenario} on {server}: {reason}")

    def servers(self) -> list[str]:
        return list(dict.fromkeys(server for _, _, server in self.runs))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        servers = self.servers()
        for scenario, case in self.order:
            runs = {s: self.runs.get((scenario, case, s), []) for s in servers}
            names = [m for m in METRICS if any(m in r.metrics for rs in runs.values() for r in rs)]
            valid = all(r.valid for rs in runs.values() for r in rs)
            counts = {s: f"{sum(r.valid for r in rs)}/{len(rs)}" for s, rs in runs.items() if rs}
            for metric in names:
                cells: dict[str, dict[str, Any]] = {}
                for server, server_runs in runs.items():
                    values = [r.metrics[metric] for r in server_runs if metric in r.metrics]
                    good = [
                        r.metrics[metric] for r in server_runs if r.valid and metric in r.metrics
                    ]
                    if values:
                        cells[server] = {
                            "runs": values,
                            "valid_runs": good,
                            "median": statistics.median(good or values),
                            "all_invalid": not good,
                        }
                row: dict[str, Any] = {
                    "scenario": scenario,
                    "case": case,
                    "metric": metric,
                    "label": METRICS[metric][0],
                    "unit": METRICS[metric][1],
                    "better": METRICS[metric][2],
                    "servers": cells,
                    "valid": valid,
                    "valid_runs": counts,
                }
                kanal = cells.get("kanal")
                for key, other in RATIOS.items():
                    if kanal and (cell := cells.get(other)) and cell["median"]:
                        row[key] = kanal["median"] / cell["median"]
                out.append(row)
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "skipped": self.skipped,
            "rows": self.rows(),
            "runs": [
                {"scenario": sc, "case": case, "server": server, "runs": [r.as_dict() for r in rs]}
                for (sc, case, server), rs in self.runs.items()
            ],
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")

    def markdown(self) -> str:
        meta = self.meta
        servers = self.servers()
        ratios = {key: other for key, other in RATIOS.items() if {"kanal", other} <= set(servers)}
        lines = [
            f"# kanal benchmark, {meta['date']}",
            "",
            f"- command: `{meta['command']}`",
            f"- machine: {_machine(meta['machine'])}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
            f"- generator: {meta['generator']}",
            f"- runs per case: {meta['runs']}; cells are medians of the valid runs "
            "(* = no valid run: median of all); ratios = kanal / the other server",
            "",
            "| scenario | case | metric | "
            + " | ".join([*servers, *(f"kanal/{other}" for other in ratios.values())])
            + " | valid |",
            "|---|---|---|" + "---:|" * (len(servers) + len(ratios)) + "---|",
        ]
        for row in self.rows():
            if not METRICS[row["metric"]][3]:
                continue
            cells = [_cell(row["servers"].get(s), row["unit"]) for s in servers]
            cells += [f"{row[key]:.2f}x" if key in row else "-" for key in ratios]
            lines.append(
                f"| {row['scenario']} | {row['case']} | {row['label']} | "
                + " | ".join(cells)
                + f" | {'yes' if row['valid'] else _counts(row['valid_runs'])} |"
            )
        notes = self.notes()
        if notes:
            lines += ["", "Invalid runs:", *(f"- {n}" for n in notes)]
        if self.skipped:
            lines += ["", "Skipped:", *(f"- {n}" for n in self.skipped)]
        return "\n".join(lines) + "\n"

    def notes(self) -> list[str]:
        out = []
        for (scenario, case, server), runs in self.runs.items():
            for index, run in enumerate(runs):
                out += [f"{scenario} / {case} / {server} run {index + 1}: {n}" for n in run.notes]
        return out


def _machine(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"open files {m['open_files_limit']}"
    )


def _cell(cell: dict[str, Any] | None, unit: str) -> str:
    if cell is None:
        return "-"
    return _fmt(cell["median"], unit) + ("*" if cell["all_invalid"] else "")


def _counts(counts: dict[str, str]) -> str:
    return "valid runs: " + ", ".join(f"{server} {count}" for server, count in counts.items())


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "cores":
        return f"{value:.2f}"
    if unit == "%":
        return f"{value:.2%}"
    if unit == "":
        return f"{value:,.0f}"
    if unit in ("ms", "s"):
        return f"{value:.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    if unit == "bytes":
        return f"{value:,.0f} B"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    return f"{value:,.0f}{unit if unit.startswith('/') else ' ' + unit}"
