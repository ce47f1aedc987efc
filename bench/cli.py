"""``python -m bench run``: the one command that benchmarks kanal and soketi side by side,
with the floor server (bench/native/floor.c: the least any server must do) beside them on request.

With two or more cores the server is pinned to core 0 and every generator process to core 1
(``--no-pin`` turns that off; the smoke test does). Each scenario runs against kanal, then
against soketi if ``--soketi-dir`` (default ``$KANAL_SOKETI_DIR``) holds
an installed soketi. The results go to ``bench/results/<date>.json`` and a Markdown table to
stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import procstat
from bench.measure import Ctx
from bench.native import NoCompiler
from bench.report import Report
from bench.scenarios import SCENARIOS, UNSUPPORTED, Sizes
from bench.servers import (
    ServerProc,
    soketi_available,
    start_floor,
    start_kanal,
    start_kanal_asgi,
    start_kanal_redis,
    start_soketi,
)
from bench.worker import Generator
from bench.wsclient import BACKEND

__all__ = ["main", "run"]

REPO = Path(__file__).resolve().parent.parent
# A soketi 1.6.1 install of your own (a folder with start.sh); soketi is never vendored here.
DEFAULT_SOKETI = Path(os.environ.get("KANAL_SOKETI_DIR", "/nonexistent"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser("run", help="run the benchmark")
    run_p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default: all)",
    )
    run_p.add_argument("--runs", type=int, default=3, help="runs per case (default 3)")
    run_p.add_argument(
        "--servers",
        default="kanal,soketi",
        help="comma list of kanal, kanal-redis (one node in cluster mode), kanal-sqlite (the app "
        "in a SQLite app store), kanal-asgi (embedded "
        "under uvicorn), kanal-own-port (embedded, own transport), kanal-base (kanal from "
        "--base-src), soketi, floor (the reference server of bench/native/floor.c, built with "
        "cc on first use)",
    )
    run_p.add_argument(
        "--base-src",
        type=Path,
        default=None,
        help="for kanal-base: the src/ folder of another kanal checkout (e.g. a git worktree "
        "of an earlier commit), run with this environment's dependencies",
    )
    run_p.add_argument(
        "--soketi-dir",
        type=Path,
        default=DEFAULT_SOKETI if DEFAULT_SOKETI.is_dir() else None,
        help="an installed soketi peer folder with start.sh (default: $KANAL_SOKETI_DIR)",
    )
    run_p.add_argument("--duration", type=float, default=5.0, help="seconds per window")
    run_p.add_argument("--workers", type=int, default=4, help="subscriber processes")
    run_p.add_argument("--no-pin", action="store_true", help="do not pin server/generator")
    run_p.add_argument("--tiny", action="store_true", help="smoke-test sizes (5 subscribers)")
    run_p.add_argument(
        "--saturation",
        type=float,
        default=0.9,
        help="generator CPU share (of its cores) above which a run is invalid",
    )
    run_p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for other processes to go idle",
    )
    run_p.add_argument(
        "--max-foreign",
        type=float,
        default=0.1,
        metavar="CORES",
        help="CPU other processes may use during a run before it is invalid (default 0.1)",
    )
    run_p.add_argument("--out", type=Path, help="JSON results file (default bench/results/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args, argv if argv is not None else sys.argv[1:])
    except NoCompiler as exc:  # the http scenario and the floor server are C (bench/native/)
        raise SystemExit(f"bench: {exc}") from None
    print(report.markdown())
    return 0


def run(args: argparse.Namespace, argv: Sequence[str]) -> Report:
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    soketi_dir: Path | None = args.soketi_dir.resolve() if args.soketi_dir else None
    if "soketi" in servers and not soketi_available(soketi_dir):
        print(
            f"bench: soketi not installed in {soketi_dir}; running kanal only "
            "(run <soketi-dir>/install.sh, pass --soketi-dir)",
            file=sys.stderr,
        )
        servers.remove("soketi")
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    server_cpu, gen_cpu = (0, 1) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {1})  # the orchestrator is part of the generator
    now = dt.datetime.now(dt.UTC)
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench " + shlex.join(argv),
        "machine": procstat.machine(),
        "versions": procstat.versions(REPO, soketi_dir if "soketi" in servers else None),
        "generator": (
            f"{BACKEND}, {args.workers} subscriber processes + 1 publisher, "
            + ("server on CPU 0, generator on CPU 1" if pin else "not pinned")
            + "; latency: raw-socket subscribers with kernel receipt stamps (SO_TIMESTAMPNS)"
            + (
                "; http without subscribers: httpgen (bench/native/httpgen.c)"
                if "http" in scenarios
                else ""
            )
        ),
        "runs": args.runs,
        "servers": servers,
        "scenarios": scenarios,
        "sizes": "tiny" if args.tiny else "full",
    }
    report = Report(meta)
    workdir = REPO / "bench" / "results" / "logs"
    started: list[ServerProc] = []

    def start(name: str) -> ServerProc:
        if name == "kanal":
            server = start_kanal(workdir, server_cpu)
        elif name == "kanal-redis":
            server = start_kanal_redis(workdir, server_cpu)
        elif name == "kanal-sqlite":
            server = start_kanal(workdir, server_cpu, name="kanal-sqlite", sqlite=True)
        elif name in ("kanal-asgi", "kanal-own-port"):
            server = start_kanal_asgi(workdir, server_cpu, own_port=name == "kanal-own-port")
        elif name == "kanal-base":
            if args.base_src is None:
                raise SystemExit("kanal-base needs --base-src")
            server = start_kanal(workdir, server_cpu, name="kanal-base", src=args.base_src)
        elif name == "floor":
            server = start_floor(workdir, server_cpu)
        else:
            assert soketi_dir is not None
            server = start_soketi(soketi_dir, workdir, server_cpu)
        started.append(server)
        return server

    gen = Generator(args.workers, gen_cpu)
    ctx = Ctx(
        gen=gen,
        start=start,
        runs=args.runs,
        duration=0.5 if args.tiny else args.duration,
        gen_cores=1 if pin else len(os.sched_getaffinity(0)),
        gen_cpu=gen_cpu,
        saturation=args.saturation,
        max_foreign=args.max_foreign,
        wait_quiet=args.wait_quiet,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    sizes = Sizes.tiny() if args.tiny else Sizes.full()
    try:
        for scenario in scenarios:
            function, _ = SCENARIOS[scenario]
            for name in servers:
                if (scenario, name) in UNSUPPORTED:
                    report.skip(scenario, name, UNSUPPORTED[scenario, name])
                    ctx.log(f"bench: {scenario} on {name} skipped")
                    continue
                t0 = time.monotonic()
                ctx.log(f"bench: {scenario} on {name} ...")
                server = start(name)
                try:
                    for case, result in function(ctx, sizes, server):
                        report.add(scenario, case, name, result)
                        ctx.log(
                            f"  {case}: {_brief(result.metrics)}"
                            + (f"  INVALID: {'; '.join(result.notes)}" if result.notes else "")
                        )
                finally:
                    gen.broadcast("close")
                    for proc in started:
                        proc.stop()
                    started.clear()
                ctx.log(f"bench: {scenario} on {name} done in {time.monotonic() - t0:.0f} s")
    finally:
        gen.close()
    out = args.out or REPO / "bench" / "results" / f"{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    report.meta["results_file"] = str(out)
    report.write_json(out)
    return report


def _brief(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:,.3g}" for k, v in metrics.items())
