"""Smoke test of the benchmark (bench/): every scenario at a tiny size against kanal only.

It runs the real command (``python -m bench run --tiny``: 5 subscribers, one run, no CPU
pinning, no soketi) in a subprocess, so the generator processes, the server start-up, the
signing, the kernel-stamped subscribers of the latency scenario (bench/stampclient.py) and
the report all stay exercised and cannot rot. Timing numbers are not checked
(the machine may be shared); correctness is: every scenario reports, every trigger is
accepted and every event reaches every subscriber.

The C programs of bench/native/ (the http scenario's generator httpgen, the floor server) are
compiled by the benchmark on first use; without a C compiler only the parts that need them
are skipped, with the reason printed.
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
from bench.native import compiler

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
HTTP_CASES = {
    "no subscribers, keep-alive",
    "no subscribers, reconnect per request",
    "batch_events of 10, keep-alive",
    "10 channels, keep-alive",
    "5 subscribers",
}
NO_CC = "no C compiler (cc, gcc, clang or $CC): bench/native/ cannot be built"


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


def _run_bench(
    out: Path, servers: str = "kanal", scenarios: tuple[str, ...] = SCENARIOS
) -> tuple[str, dict[str, Any]]:
    command = [
        sys.executable, "-m", "bench", "run", "--tiny", "--runs", "1", "--servers", servers,
        "--scenarios", ",".join(scenarios), "--no-pin", "--workers", "2", "--out", str(out),
        # Shared CI machines: neither a busy neighbour nor a busy generator fails the smoke test.
        "--max-foreign", "1000", "--saturation", "1000",
    ]  # fmt: skip
    done = _bench(command, timeout=200)  # eight scenarios, a few seconds each, on a busy host
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def _invalid_runs(results: dict[str, Any]) -> list[str]:
    return [
        f"{r['scenario']}/{r['case']}/{r['server']}: {run['notes']}"
        for r in results["runs"]
        for run in r["runs"]
        if not run["valid"]
    ]


def test_every_scenario_runs_at_tiny_size(tmp_path: Path) -> None:
    scenarios: tuple[str, ...] = SCENARIOS
    if compiler() is None:  # the http scenario's generator is bench/native/httpgen.c
        print(f"http scenario skipped: {NO_CC}")
        scenarios = tuple(s for s in SCENARIOS if s != "http")
    stdout, results = _run_bench(tmp_path / "results.json", scenarios=scenarios)

    assert "| scenario | case | metric | kanal | valid |" in stdout
    assert results["meta"]["servers"] == ["kanal"]
    rows = results["rows"]
    assert {row["scenario"] for row in rows} == set(scenarios)
    assert not _invalid_runs(results), _invalid_runs(results)

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
    if "http" in scenarios:
        assert {row["case"] for row in rows if row["scenario"] == "http"} == HTTP_CASES
        assert all(v > 0 for v in medians("http", "triggers_per_s"))
        reconnects = {
            row["case"]: row["servers"]["kanal"]["median"]
            for row in rows
            if row["scenario"] == "http" and row["metric"] == "http_reconnects"
        }
        assert reconnects["no subscribers, keep-alive"] == 0  # kanal keeps connections alive
        assert reconnects["no subscribers, reconnect per request"] > 0
    assert all(v > 0 for v in medians("latency", "p99_ms"))
    latency_cases = {row["case"] for row in rows if row["scenario"] == "latency"}
    assert latency_cases == {"5 subs x 20 ev/s", "10 subs x 20 ev/s"}
    # The latency scenario's subscribers are the kernel-stamped raw sockets: every read carried
    # a stamp, and the kernel's arrival time never comes after the generator's receipt.
    kernel, user = medians("latency", "p99_ms"), medians("latency", "p99_user_ms")
    assert user and all(0 < k <= u + 0.01 for k, u in zip(kernel, user, strict=True))
    assert medians("latency", "unstamped_reads") == [0, 0]  # two tiny cases
    assert all(v > 0 for v in medians("connect-storm", "connect_seconds"))
    assert all(v > 0 for v in medians("idle-memory", "rss_after_mib"))


def test_floor_server_runs_beside_kanal_at_tiny_size(tmp_path: Path) -> None:
    """``--servers kanal,floor``: the floor server (bench/native/floor.c) is built, delivers
    every event in the latency, fan-out and http scenarios, the report divides kanal by it,
    and many-channels (channel auth, presence) is skipped for it with a reason, not failed."""
    if compiler() is None:
        pytest.skip(NO_CC)
    scenarios = ("fanout", "latency", "http", "many-channels")
    stdout, results = _run_bench(tmp_path / "floor.json", "kanal,floor", scenarios)

    assert "| kanal | floor | kanal/floor | valid |" in stdout
    assert not _invalid_runs(results), _invalid_runs(results)
    rows = results["rows"]
    for scenario in ("fanout", "latency", "http"):
        delivered = [
            row["servers"]["floor"]["median"]
            for row in rows
            if row["scenario"] == scenario and row["metric"] == "delivered_ratio"
        ]
        assert delivered and all(ratio == 1.0 for ratio in delivered), (scenario, rows)
    http = {row["case"] for row in rows if row["scenario"] == "http" and "floor" in row["servers"]}
    assert http == HTTP_CASES
    assert all(
        "ratio_floor" in row
        for row in rows
        if row["metric"] in ("p99_ms", "deliveries_per_s", "triggers_per_s")
        and row["scenario"] != "many-channels"
    )
    assert {row["scenario"] for row in rows if "floor" in row["servers"]} == set(scenarios) - {
        "many-channels"
    }
    assert len(results["skipped"]) == 1 and results["skipped"][0].startswith(
        "many-channels on floor: "
    )
    assert "Skipped:\n- many-channels on floor: " in stdout


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
