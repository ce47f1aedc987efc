"""The chat example's servers, started with its README's commands (examples/chat/README.md).

``./scripts/serve`` and ``examples/chat/run`` run as written, from the repository root, with
``--port 0`` appended so that each gets a free port, read back from its log; the chat finds
kanal through ``$PUSHER_URL``. Each process is terminated by pid when its ``async with`` ends.
Used by tests/browser/test_chat.py, tests/test_example_chat.py and tests/browser/screenshots.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from tests.wsclient import end_process

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "examples" / "chat" / "README.md"
START = 120.0  # the scripts first install .venv / node_modules when a lock changed
STOP = 10.0


def readme_commands() -> list[str]:
    """Every line of the README's bash blocks, comments removed."""
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.M | re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    return [re.sub(r"\s+#\s.*$", "", line) for line in lines]


def command(start: str) -> str:
    """The README's command that begins with ``start`` (exactly one must)."""
    found = [line for line in readme_commands() if line.split()[0] == start]
    assert len(found) == 1, f"{README}: one command starting {start!r}: {found}"
    return found[0]


class Process:
    """A started command's merged output, read continually so its log never blocks it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.ended = False  # its output ended: it exited, or is about to
        self._changed = asyncio.Condition()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            async for raw in self.proc.stdout:
                async with self._changed:
                    self.lines.append(raw.decode(errors="replace").rstrip())
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self.ended = True
                self._changed.notify_all()

    async def wait_for(self, pattern: str, within: float = START) -> re.Match[str]:
        """The first line that matches; fails when the process exits or time is up."""
        regex = re.compile(pattern)
        seen = 0
        try:
            async with asyncio.timeout(within), self._changed:
                while True:
                    for line in self.lines[seen:]:
                        if match := regex.search(line):
                            return match
                    seen = len(self.lines)
                    if self.ended:
                        raise AssertionError(f"exited before {pattern!r}: {self.lines}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} within {within}s: {self.lines}") from None

    async def stop(self) -> None:
        await end_process(self.proc, STOP)
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def started(line: str, env: dict[str, str] | None = None) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        f"exec {line}",
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    process = Process(proc)
    try:
        yield process
    finally:
        await process.stop()


@contextlib.asynccontextmanager
async def kanal() -> AsyncIterator[int]:
    """``./scripts/serve`` (the development app) on a free port: the port."""
    async with started(command("./scripts/serve") + " --port 0") as process:
        found = await process.wait_for(r"kanal listening on 127\.0\.0\.1:(\d+)")
        yield int(found[1])


@contextlib.asynccontextmanager
async def chat(kanal_port: int | None) -> AsyncIterator[str]:
    """The chat on a free port, its base URL: ``examples/chat/run`` publishing to the kanal
    on ``kanal_port``, or with ``None`` ``examples/chat/run --embedded``."""
    run = [line for line in readme_commands() if line.startswith("examples/chat/run")]
    embedded = kanal_port is None
    line = next(line for line in run if ("--embedded" in line) == embedded)
    url = f"http://app-key:app-secret@127.0.0.1:{kanal_port}/apps/1"
    async with started(line + " --port 0", {} if embedded else {"PUSHER_URL": url}) as process:
        found = await process.wait_for(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
        yield found[1]
