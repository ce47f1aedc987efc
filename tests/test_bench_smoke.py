"""Smoke test of the benchmark (bench/): every scenario at a tiny size against kanal only.

It runs the real command (``python -m bench run --tiny``: 5 subscribers, one run, no CPU
pinning, no soketi) in a subprocess, so the generator processes, the server start-up, the
signing, the kernel-stamped subscribers of the latency scenario (bench/stampclient.py) and
the report all stay exercised and cannot rot. Timing numbers are not checked
(the machine may be shared); correctness is: every scenario reports, every trigger is
accepted and every event reaches every subscriber.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = (
    "fanout",
    "latency",
    "many-channels",
    "idle-memory",
    "http",
    "connect-storm",
    "coalescing",
    "xhr-streaming",
)


def _bench(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the benchmark in its own process group: on a timeout the whole group (its
    servers and generator processes, not only the orchestrator) is killed."""
    with subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _run_bench(out: Path) -> tuple[str, dict[str, Any]]:
    command = [
        sys.executable, "-m", "bench", "run", "--tiny", "--runs", "1", "--servers", "kanal",
        "--no-pin", "--workers", "2", "--out", str(out),
        # Shared CI machines: neither a busy neighbour nor a busy generator fails the smoke test.
        "--max-foreign", "1000", "--saturation", "1000",
    ]  # fmt: skip
    done = _bench(command, timeout=200)  # eight scenarios, a few seconds each, on a busy host
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_every_scenario_runs_at_tiny_size(tmp_path: Path) -> None:
    stdout, results = _run_bench(tmp_path / "results.json")

    assert "| scenario | case | metric | kanal | valid |" in stdout
    assert results["meta"]["servers"] == ["kanal"]
    rows = results["rows"]
    assert {row["scenario"] for row in rows} == set(SCENARIOS)
    invalid = [
        f"{r['scenario']}/{r['case']}/{r['server']}: {run['notes']}"
        for r in results["runs"]
        for run in r["runs"]
        if not run["valid"]
    ]
    assert not invalid, invalid

    def medians(scenario: str, metric: str) -> list[float]:
        return [
            row["servers"]["kanal"]["median"]
            for row in rows
            if row["scenario"] == scenario and row["metric"] == metric
        ]

    for scenario in ("fanout", "latency", "many-channels", "http", "coalescing"):
        ratios = medians(scenario, "delivered_ratio")
        assert ratios and all(r == 1.0 for r in ratios), (scenario, ratios)
    assert all(v > 0 for v in medians("fanout", "deliveries_per_s"))
    assert all(v > 0 for v in medians("http", "triggers_per_s"))
    assert all(v > 0 for v in medians("latency", "p99_ms"))
    # The latency scenario's subscribers are the kernel-stamped raw sockets: every read carried
    # a stamp, and the kernel's arrival time never comes after the generator's receipt.
    kernel, user = medians("latency", "p99_ms"), medians("latency", "p99_user_ms")
    assert user and all(0 < k <= u + 0.01 for k, u in zip(kernel, user, strict=True))
    assert medians("latency", "unstamped_reads") == [0]
    assert all(v > 0 for v in medians("connect-storm", "connect_seconds"))
    assert all(v > 0 for v in medians("idle-memory", "rss_after_mib"))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_cluster_mode_server_runs_at_tiny_size(tmp_path: Path) -> None:
    """``--servers kanal-redis``: one kanal node in cluster mode with its own redis-server."""
    out = tmp_path / "cluster.json"
    command = [
        sys.executable, "-m", "bench", "run", "--tiny", "--runs", "1", "--servers",
        "kanal-redis", "--scenarios", "fanout", "--no-pin", "--workers", "2", "--out", str(out),
        "--max-foreign", "1000", "--saturation", "1000",
    ]  # fmt: skip
    done = _bench(command, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    delivered = [
        row["servers"]["kanal-redis"]["median"]
        for row in results["rows"]
        if row["metric"] == "delivered_ratio"
    ]
    assert delivered and all(ratio == 1.0 for ratio in delivered), results["rows"]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_four_node_cluster_scenario_runs_in_both_fanout_modes(tmp_path: Path) -> None:
    """``python -m bench.cluster --tiny``: 4 nodes, channels spread over them, per mode."""
    out = tmp_path / "nodes.json"
    done = _bench([sys.executable, "-m", "bench.cluster", "--tiny", "--out", str(out)], 300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"node", "channel"}
    for result in results.values():
        assert result["triggers"] > 0 and result["errors"] == 0
        assert result["delivered"] == result["expected"]  # every event, every subscriber
        assert len(result["node_cpu_seconds"]) == 4 and result["redis_bytes_out"] > 0
    # Each event reaches the one node with its subscribers, instead of all four.
    per_delivery = {mode: r["redis_bytes_out_per_delivery"] for mode, r in results.items()}
    assert per_delivery["channel"] < per_delivery["node"] / 2, per_delivery


def test_embedded_servers_and_the_base_checkout_run_at_tiny_size(tmp_path: Path) -> None:
    """``kanal-asgi`` (uvicorn), ``kanal-own-port`` (embedded, own transport),
    ``kanal-base`` (another checkout's src/, here this one's) and ``kanal-sqlite`` (the app in
    a SQLite app store) deliver every event."""
    out = tmp_path / "embedded.json"
    servers = ["kanal-asgi", "kanal-own-port", "kanal-base", "kanal-sqlite"]
    command = [
        sys.executable, "-m", "bench", "run", "--tiny", "--runs", "1", "--servers",
        ",".join(servers), "--base-src", str(REPO / "src"), "--scenarios", "fanout,http",
        "--no-pin", "--workers", "2", "--out", str(out),
        "--max-foreign", "1000", "--saturation", "1000",
    ]  # fmt: skip
    done = _bench(command, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    for server in servers:
        delivered = [
            row["servers"][server]["median"] for row in rows if row["metric"] == "delivered_ratio"
        ]
        assert delivered and all(ratio == 1.0 for ratio in delivered), (server, rows)


def test_in_process_trigger_rate_runs() -> None:
    command = [sys.executable, "-m", "bench.inprocess", "--seconds", "0.2", "--runs", "1"]
    done = _bench([*command, "--no-pin"], timeout=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "await trigger/s: median" in done.stdout
    assert "sync trigger/s (thread): median" in done.stdout


def test_instruction_count_workloads_run() -> None:
    """bench/instructions.py's workloads (counted under callgrind by bench/instructions.sh)
    deliver to every in-memory subscriber; only the workload differs between runs."""
    delivered = {}
    for workload in ("none", "fanout", "http", "wire"):
        done = _bench([sys.executable, "-m", "bench.instructions", workload], timeout=120)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        delivered[workload] = int(done.stdout.split(": ")[1].split()[0])
    assert delivered["http"] == delivered["wire"] == delivered["none"] > 0  # nobody subscribed
    assert delivered["fanout"] > delivered["none"] + 200 * 1000 * 200  # 200 B to 1,000, 200x
