"""Smoke test of the soak (``python -m bench.soak``, docs/performance.md "Soak") at a tiny size.

The real command runs in a subprocess, so its redis-server, ``kanal serve --workers 2``, the
generator processes with their own source addresses, the HTTP API checks and the report stay
exercised. ``activity_timeout`` is 1 s so that kanal pings every connection during the few
seconds of hold and the clients' answers are exercised too. Correctness is checked, not
timing: every connection subscribed, none lost, every ping answered, the broadcast reached
every connection. A unit test shows that a broadcast missing one connection fails the soak.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.soak import Soak, build_parser

from tests.test_bench_smoke import _bench


def _soak(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "soak.json"
    command = [
        sys.executable, "-m", "bench.soak", "--minutes", "0.05", "--sample-seconds", "1",
        "--activity-timeout", "1", "--warmup", "2", "--logs", str(tmp_path), "--out", str(out),
        # Three seconds say nothing about RSS growth; the figure is only checked to exist.
        "--flat", "0.5", *args,
    ]  # fmt: skip
    done = _bench(command, timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "RESULT: OK" in done.stdout
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _check(result: dict[str, Any], connections: int) -> None:
    assert result["ok"] and result["failures"] == []
    connect, hold, broadcast = result["connect"], result["hold"], result["broadcast"]
    assert connect["ok"] == connect["subscription_count"] == connections
    assert hold["connections"] == connections and hold["lost"] == 0
    assert hold["samples"][-1]["pings"] > 0 and hold["samples"][-1]["ws_pings"] > 0
    assert hold["bytes_per_connection_end"] > 0 and hold["server_cpu_cores"] >= 0
    assert broadcast["delivered"] == broadcast["expected"] == connections
    assert broadcast["seconds_to_all"] is not None and broadcast["seconds_to_all"] > 0


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_soak_across_workers_on_redis(tmp_path: Path) -> None:
    result = _soak(tmp_path, "--connections", "200", "--workers", "2", "--generators", "2")
    _check(result, 200)
    assert result["meta"]["args"]["adapter"] == "redis"
    assert len(result["connect"]["fds_per_process"]) == 3  # the master and two workers


def test_soak_one_process_memory_adapter(tmp_path: Path) -> None:
    result = _soak(tmp_path, "--connections", "100", "--workers", "1", "--generators", "2")
    _check(result, 100)
    assert result["meta"]["args"]["adapter"] == "memory"


class _Gen:
    """A generator that reports ``events`` broadcasts received."""

    def __init__(self, events: int) -> None:
        self.events = events

    def send(self, command: str, **args: Any) -> None:
        assert command == "await_event"

    def reply(self) -> dict[str, int]:
        return {"events": self.events, "first_event_ns": 1, "last_event_ns": 2}


class _Api:
    def trigger(self, channel: str, name: str, data: str) -> None:
        pass


def test_a_broadcast_that_misses_a_connection_fails_the_soak() -> None:
    soak = Soak(build_parser().parse_args([]))
    soak.gens = [_Gen(100), _Gen(99)]  # type: ignore[list-item]
    result = soak.broadcast(_Api(), expected=200)  # type: ignore[arg-type]
    assert result["delivered"] == 199 and result["seconds_to_all"] is None
    assert soak.failures == ["broadcast reached 199 of 200"]
