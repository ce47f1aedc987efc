"""deploy/Dockerfile's steps, run without Docker (no engine runs where the tests run).

The build stage's WORKDIR, COPY and RUN instructions run as written in a scratch directory
(``/opt/kanal`` and ``/src`` moved under it, ``python`` the test's interpreter), the final
stage's CMD then runs from the virtualenv they made, with the HEALTHCHECK command asked about
it and the STOPSIGNAL sent to it. Two deviations, both for a shared test machine: the CMD's
``--host 0.0.0.0`` becomes 127.0.0.1, and the port comes from ``KANAL_PORT`` (a free one).
What cannot run here: the base image itself, ``useradd`` and USER.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.cluster_nodes import free_port
from tests.test_deploy_files import (
    CONFIG_PATH,
    ROOT,
    Instruction,
    dockerfile,
    exec_form,
    final_stage,
    healthcheck,
    only,
    seconds,
)
from tests.wsclient import end_process

DEPLOY = ROOT / "deploy"


def build_stage() -> list[Instruction]:
    instructions = dockerfile()
    starts = [i for i, item in enumerate(instructions) if item.keyword == "FROM"]
    assert len(starts) == 2, "a build stage, then the image"
    return instructions[starts[0] + 1 : starts[1]]


def run_build_stage(scratch: Path) -> Path:
    """The build stage in ``scratch``; returns where ``/opt/kanal`` went."""
    opt = scratch / "opt" / "kanal"
    workdir = scratch
    for item in build_stage():
        if item.keyword == "WORKDIR":
            workdir = scratch / item.arguments.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif item.keyword == "COPY":
            *sources, target = item.arguments.split()
            destination = workdir / target
            for source in sources:
                if (ROOT / source).is_dir():  # Docker copies a directory's contents
                    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
                    shutil.copytree(ROOT / source, destination, ignore=ignore, dirs_exist_ok=True)
                    continue
                into_directory = target.endswith("/") or len(sources) > 1
                place = destination / Path(source).name if into_directory else destination
                place.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, place)
        elif item.keyword == "RUN":
            command = item.arguments.replace("/opt/kanal", str(opt))
            command = re.sub(r"^python ", f"{sys.executable} ", command)
            done = subprocess.run(
                ["bash", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, f"RUN {item.arguments}\n{done.stdout}\n{done.stderr}"
        else:
            raise AssertionError(f"the build stage has a {item.keyword}: teach this test it")
    return opt


async def test_the_dockerfile_steps_build_an_image_that_serves_and_stops(tmp_path: Path) -> None:
    opt = run_build_stage(tmp_path)
    stage = final_stage()
    assert only("COPY", stage).arguments == "--from=build /opt/kanal /opt/kanal"
    argv = exec_form(only("CMD", stage).arguments)
    config = tmp_path / "kanal.toml"
    template = (DEPLOY / "kanal.toml").read_text(encoding="utf-8")
    config.write_text(
        re.sub(r'(?m)^(key|secret) = ".*"$', r'\1 = "\1-from-the-test-0123"', template)
    )
    argv = [str(config) if arg == CONFIG_PATH else arg for arg in argv]
    argv = ["127.0.0.1" if arg == "0.0.0.0" else arg for arg in argv]
    port = free_port()
    # The image's ENV: its virtualenv first on PATH (so "kanal" and "python" are its own).
    env = {"PATH": f"{opt / 'bin'}:{os.environ['PATH']}", "KANAL_PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while line := (await process.stderr.readline()).decode():
                if f"kanal listening on 127.0.0.1:{port}" in line:
                    break
        options, check = healthcheck()
        health = await asyncio.create_subprocess_exec(*check, env=env)
        timeout = seconds(options["timeout"])
        assert await asyncio.wait_for(health.wait(), timeout) == 0

        stop_signal = only("STOPSIGNAL", stage).arguments
        process.send_signal(signal.Signals[stop_signal])
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        await end_process(process)
