"""kanal as a package: the wheel builds, installs into a clean virtualenv (runtime lock only,
no test extras, no source tree on sys.path) and its `kanal` command serves."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["--quiet", "--disable-pip-version-check"]


def run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so the checkout stays untouched."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    dist = tmp_path / "dist"
    # --no-isolation: build with the locked setuptools of this environment, not a download.
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source)
    (wheel,) = dist.glob("kanal-*.whl")
    return wheel


async def listening_port(process: asyncio.subprocess.Process) -> int:
    """The port from kanal's own "kanal listening on HOST:PORT" log line."""
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while line := (await process.stderr.readline()).decode():
            if "kanal listening on " in line:
                return int(line.rsplit(":", 1)[1])
    raise AssertionError("kanal from the wheel exited before listening")


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_wheel_installs_into_a_clean_venv_and_serves(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    lock = ROOT / "requirements" / "runtime.txt"
    run(python, "-m", "pip", "install", *QUIET, "--require-hashes", "--no-deps", "-r", lock)
    run(python, "-m", "pip", "install", *QUIET, "--no-deps", wheel)
    assert run(venv / "bin" / "kanal", "--version").startswith("kanal ")
    run(python, "-m", "pip", "check")  # the lock satisfies everything the wheel requires
    process = await asyncio.create_subprocess_exec(
        venv / "bin" / "kanal",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--admin-token",
        "packaged-console-token",
        cwd=tmp_path,  # not the checkout: only the installed package can be imported
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        port = await listening_port(process)
        answer = await http_get(port, "/")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"ok": True}
        for asset in ("", "console.js", "console.css"):  # the console's files are package data
            assert (await http_get(port, "/console/" + asset)).startswith(b"HTTP/1.1 200 ")
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 20) == 0
