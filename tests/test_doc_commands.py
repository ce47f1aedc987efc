"""Every fenced code block in README.md and docs/quickstart.md is run, or says why it is not.

* ``bash``: each line that is not a comment must be a key of :data:`COMMANDS`, whose value runs
  it (or is the reason it is not run). A doc line edited without its entry fails
  ``test_command``: that is the drift check. ``test_no_stale_command`` fails on entries no doc
  uses any more.
* ``python``, ``html``, ``toml``: each block must contain exactly one marker of its language in
  :data:`BLOCKS`, whose check runs it. Other languages fail unless :data:`DOC_ONLY` says why.

Documented addresses become the test's in one place, :func:`localise`. Lines run with
``bash -c`` from the repository root (``./scripts/...``) or from a temporary stand-in for it
(:func:`checkout`: ``.venv`` links to the real one, ``kanal.toml`` is README's TOML block).
Every server started here is terminated by pid in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from kanal.settings import load_config
from tests.conftest import RunningServer
from tests.wsclient import Clients, data_of, end_process, trigger

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "docs" / "quickstart.md")
VENV_BIN = ROOT / ".venv" / "bin"
PUSHER_JS = ROOT / "node_modules" / "pusher-js"
KANAL = (VENV_BIN / "kanal").resolve()  # what `kanal` must be once activated
WAIT = 10.0  # anything that should happen at once
INSTALL = 120.0  # ./scripts/serve installs from the lock first when it changed


@dataclass(frozen=True)
class Block:
    doc: Path
    lang: str
    text: str


def blocks() -> list[Block]:
    fence = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
    return [Block(d, m[1], m[2]) for d in DOCS for m in fence.finditer(d.read_text())]


def localise(text: str, kanal_port: int, auth_port: int = 0) -> str:
    """The one substitution: kanal's port 6001, the auth endpoint's 8000 (0: any free port) and
    origin (pusher-js in Node has no page for "/pusher/auth" to be relative to)."""
    text = text.replace("6001", str(kanal_port)).replace("8000", str(auth_port))
    return text.replace('endpoint: "/', f'endpoint: "http://127.0.0.1:{auth_port}/')


@dataclass
class Ctx:
    server: RunningServer  # in-process kanal, default app (tests/conftest.py)
    tmp: Path
    block: Block


Check = Callable[[str, Ctx], Awaitable[None]]


def environment(activated: bool = True) -> dict[str, str]:
    """No KANAL_* from the caller; ``activated``: .venv/bin first on PATH, as activation does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANAL_")}
    path = [p for p in env["PATH"].split(os.pathsep) if Path(p) != VENV_BIN]
    env["PATH"] = os.pathsep.join([str(VENV_BIN), *path] if activated else path)
    return env


async def run(*argv: str, cwd: Path, activated: bool = True) -> str:
    """Run to completion; exit status 0 required; stdout."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=environment(activated), stdout=-1, stderr=-1, stdin=-3
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (argv, out.decode(), err.decode())
    return out.decode()


class Output:
    """Lines a started process writes (stdout and stderr merged); ``fail`` ends waits early."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.fail = re.compile("(?!)")  # matches nothing
        self.lines: list[str] = []

    async def wait_for(self, pattern: str, within: float = WAIT) -> re.Match[str]:
        """The first line, already read or not, that matches."""
        regex = re.compile(pattern)
        seen = iter(self.lines)
        try:
            async with asyncio.timeout(within):
                while True:
                    line = next(seen, None)
                    if line is None:
                        raw = await self.stream.readline()
                        assert raw, f"exited before {pattern!r}: {self.lines}"
                        line = raw.decode().rstrip("\n")
                        self.lines.append(line)
                    if match := regex.search(line):
                        return match
                    assert not self.fail.search(line), f"{line!r} before {pattern!r}"
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} within {within}s: {self.lines}") from None


@asynccontextmanager
async def started(*argv: str, cwd: Path) -> AsyncIterator[Output]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=environment(), stdout=-1, stderr=-2, stdin=-3
    )
    try:
        assert proc.stdout is not None
        yield Output(proc.stdout)
    finally:
        await end_process(proc, WAIT)


def one(found: Iterable[Block]) -> Block:
    matches = list(found)
    assert len(matches) == 1, f"expected one such block, found {len(matches)}"
    return matches[0]


def checkout(tmp: Path) -> Path:
    """A stand-in for the repository root: the real .venv, and README's TOML as kanal.toml."""
    here = tmp / "checkout"
    if not here.exists():
        here.mkdir()
        (here / ".venv").symlink_to(ROOT / ".venv")
        toml = one(b for b in blocks() if b.lang == "toml" and b.doc.name == "README.md")
        (here / "kanal.toml").write_text(toml.text)
    return here


# --- bash lines -----------------------------------------------------------------------------


async def serves(line: str, ctx: Ctx) -> None:
    """Run with ``--port 0 --host 127.0.0.1`` appended; ``GET /`` answers ``{"ok":true}``."""
    command = re.sub(r"\s+#\s.*$", "", line) + " --port 0 --host 127.0.0.1"
    cwd = ROOT if line.startswith("./scripts/") else checkout(ctx.tmp)
    async with started("bash", "-c", f"exec {command}", cwd=cwd) as out:
        port = (await out.wait_for(r"kanal listening on 127\.0\.0\.1:(\d+)", INSTALL))[1]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as r:
            assert json.loads(await r.read()) == {"ok": True}


async def serves_console(line: str, ctx: Ctx) -> None:
    """As :func:`serves`; the console answers with the line's token, and only with it."""
    token = re.search(r"KANAL_ADMIN_TOKEN=(\S+)", line)
    assert token is not None, line
    command = line + " --port 0 --host 127.0.0.1"
    async with started("bash", "-c", f"exec env {command}", cwd=ROOT) as out:
        port = (await out.wait_for(r"kanal listening on 127\.0\.0\.1:(\d+)", INSTALL))[1]
        url = f"http://127.0.0.1:{port}/console/api/apps"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"Authorization": f"Bearer {token[1]}"}) as r:
                assert r.status == 200 and (await r.json())["apps"], await r.read()
            async with http.get(url) as r:
                assert r.status == 401


def answers(expected: Callable[[str], bool]) -> Check:
    """Run against the in-process server; the output must be what the line's comment says."""

    async def check(line: str, ctx: Ctx) -> None:
        out = await run("bash", "-c", localise(line, ctx.server.port), cwd=ctx.tmp)
        assert expected(out), (line, out)

    return check


async def checks_config(line: str, ctx: Ctx) -> None:
    out = await run("bash", "-c", line, cwd=checkout(ctx.tmp))
    assert out.startswith("# kanal effective configuration (secrets masked)"), out
    assert 'secret = "ap***"' in out and "app-secret" not in out, out


async def activates(line: str, ctx: Ctx) -> None:
    """In a shell without .venv on PATH, after the line `kanal` is .venv's."""
    out = await run(
        "bash", "-c", f'{line}\nrealpath "$(command -v kanal)"', cwd=ROOT, activated=False
    )
    assert out.strip() == str(KANAL), out


async def pipx_installs(line: str, ctx: Ctx) -> None:
    """Not run: pipx is not installed here and would fetch the dependencies from PyPI. What it
    relies on is checked: the ``kanal`` console script; tests/test_packaging.py installs the
    built wheel into a clean virtualenv and serves with that command."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"kanal": "kanal.cli:main"}


async def clones(line: str, ctx: Ctx) -> None:
    command = line.replace("<this repository>", str(ROOT))
    await run("bash", "-c", f"{command} && test -x scripts/serve", cwd=ctx.tmp)


COMMANDS: dict[str, Check | str] = {
    "./scripts/serve": serves,
    "./scripts/serve                       # installs into .venv, serves 127.0.0.1:6001": serves,
    "./scripts/test": "not run: it is the test command itself (CI's .ci/run runs it)",
    "KANAL_ADMIN_TOKEN=change-me-to-a-long-secret ./scripts/serve": serves_console,
    "source .venv/bin/activate   # this shell only; `deactivate` undoes it": activates,
    "pipx install .              # or: kanal in its own virtualenv, the command in ~/.local/bin": (
        pipx_installs
    ),
    "kanal serve --config kanal.toml      # or KANAL_* environment variables, or flags": serves,
    "kanal check-config kanal.toml        # validate and print the effective config, secrets "
    "masked": checks_config,
    "git clone <this repository> kanal && cd kanal": clones,
    '.venv/bin/kanal serve --app-id 4242 --app-key my-key --app-secret "$(openssl rand -hex 20)"': (
        serves
    ),
    ".venv/bin/kanal serve --config kanal.toml": serves,
    'curl -s 127.0.0.1:6001/        # {"ok":true}': answers(lambda out: out == '{"ok":true}'),
    'curl -s 127.0.0.1:6001/ready   # {"ready": true, ...}; 503 while draining or when Redis is '
    "down": answers(lambda out: json.loads(out)["ready"] is True),
    "curl -s 127.0.0.1:6001/metrics # Prometheus text format (docs/metrics.md)": answers(
        lambda out: "\n# TYPE " in out
    ),
}


# --- python, html and toml blocks -----------------------------------------------------------


async def triggers(text: str, ctx: Ctx) -> None:
    async with Clients() as clients:
        ws = await clients.connect(ctx.server)
        await ws.subscribe("orders")
        await run(sys.executable, "-c", localise(text, ctx.server.port), cwd=ctx.tmp)
        assert data_of(await ws.expect("order-shipped", "orders")) == {"id": 42}


_NODE_PRELUDE = """
global.Pusher = require(%s);
const say = (line) => process.stdout.write(line + "\\n");
const text = (a) => (typeof a === "string" ? a : JSON.stringify(a));
global.document = { body: { insertAdjacentHTML: (_where, html) => say("out " + html) } };
console.log = (...args) => say("out " + args.map(text).join(" "));
"""
_NODE_REPORT = """
pusher.connection.bind("message", (m) => {
  if (m.event === "pusher:signin_success") say("signin " + JSON.parse(m.data.user_data).id);
});
for (const channel of pusher.allChannels()) {
  channel.bind("pusher:subscription_succeeded", () => say("subscribed " + channel.name));
  channel.bind("pusher:subscription_error", (e) => say("refused " + text(e)));
}
"""


@asynccontextmanager
async def page(html: str, ctx: Ctx) -> AsyncIterator[Output]:
    """The page's inline scripts in Node: pusher-js as the global ``Pusher``, a ``document``
    and ``console.log`` that print ``out ...``; then ``subscribed``/``signin`` lines."""
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert scripts, html
    source = _NODE_PRELUDE % json.dumps(str(PUSHER_JS)) + "\n".join(scripts) + _NODE_REPORT
    (ctx.tmp / "page.js").write_text(source)
    async with started("node", str(ctx.tmp / "page.js"), cwd=ctx.tmp) as out:
        out.fail = re.compile("^refused ")
        yield out


async def page_receives(text: str, ctx: Ctx) -> None:
    async with page(localise(text, ctx.server.port), ctx) as out:
        await out.wait_for(r"^subscribed orders$")
        await trigger(ctx.server, "orders", "order-shipped", json.dumps({"id": 7301}))
        await out.wait_for(r"^out .*7301")


async def auth_endpoint(text: str, ctx: Ctx) -> None:
    """The doc's Python endpoint and its pusher-js page (whichever block this is): pusher-js
    signs in and subscribes to the private and the presence channel through the endpoint."""
    siblings = [b for b in blocks() if b.doc == ctx.block.doc]
    endpoint = one(b for b in siblings if b.lang == "python" and "authenticate_user(" in b.text)
    html = one(b for b in siblings if b.lang == "html" and "channelAuthorization" in b.text)
    code = localise(endpoint.text, ctx.server.port)
    async with started(sys.executable, "-c", code, cwd=ctx.tmp) as api:
        port = int((await api.wait_for(r"^auth endpoint on http://127\.0\.0\.1:(\d+)$"))[1])
        async with page(localise(html.text, ctx.server.port, port), ctx) as out:
            for line in ("subscribed private-orders", "subscribed presence-lobby", "signin alice"):
                await out.wait_for(f"^{line}$")
            await out.wait_for("^out online: 1$")


async def serves_mounted(text: str, ctx: Ctx) -> None:
    """The block is ``app.py``; its ``# ... run: <command>`` comment is run in that directory
    on a free port. A client connected under the mount gets the event the view triggers."""
    (ctx.tmp / "app.py").write_text(text)
    command = re.search(r"^# .*\brun: (.+)$", text, re.M)
    assert command is not None, "the block says how to run it: # app.py; run: <command>"
    # The snippet needs the test environment (FastAPI, uvicorn): the interpreter running these
    # tests is in it, whether that is .venv (./scripts/test) or .venv-lowest (test-lowest).
    here = shlex.quote(str(Path(sys.executable).parent))
    line = f'export PATH={here}:"$PATH"; exec {command[1]} --host 127.0.0.1 --port 0'
    async with started("bash", "-c", line, cwd=ctx.tmp) as out:
        port = int((await out.wait_for(r"Uvicorn running on http://127\.0\.0\.1:(\d+)"))[1])
        served = RunningServer(ctx.server.server, port)  # the server object is not used
        async with Clients() as clients:
            path = "/realtime/app/app-key?protocol=7&client=js&version=8.4.0"
            ws = await clients.connect(served, path=path)
            await ws.subscribe("orders")
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"http://127.0.0.1:{port}/orders/42/ship") as response,
            ):
                assert response.status == 200, await response.text()
            assert data_of(await ws.expect("order-shipped", "orders")) == {"id": 42}


async def loads_config(text: str, ctx: Ctx) -> None:
    (ctx.tmp / "kanal.toml").write_text(text)
    load_config(str(ctx.tmp / "kanal.toml"))  # raises on an unknown or renamed setting


BLOCKS: dict[tuple[str, str], Check] = {
    ("python", "client.trigger("): triggers,
    ("python", "authenticate_user("): auth_endpoint,
    ("python", "app.mount("): serves_mounted,
    ("html", "channelAuthorization"): auth_endpoint,
    ("html", '"order-shipped"'): page_receives,
    ("toml", "[[apps]]"): loads_config,
}
DOC_ONLY: dict[str, str] = {}  # language -> why its blocks are not run (none today)


# --- tests ------------------------------------------------------------------------------------


def _lines() -> list[tuple[Path, str]]:
    return [
        (b.doc, line.strip())
        for b in blocks()
        if b.lang == "bash"
        for line in b.text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


@pytest.mark.parametrize(("doc", "line"), _lines(), ids=lambda v: getattr(v, "name", v))
async def test_command(doc: Path, line: str, kanal_server: RunningServer, tmp_path: Path) -> None:
    check = COMMANDS.get(line)
    assert check is not None, f"{doc.name}: {line!r} has no check: add it to COMMANDS"
    if isinstance(check, str):
        pytest.skip(check)
    await check(line, Ctx(kanal_server, tmp_path, Block(doc, "bash", line)))


def test_no_stale_command() -> None:
    assert set(COMMANDS) - {line for _doc, line in _lines()} == set()


@pytest.mark.parametrize(
    "block", [b for b in blocks() if b.lang != "bash"], ids=lambda b: f"{b.doc.name}-{b.lang}"
)
async def test_block(block: Block, kanal_server: RunningServer, tmp_path: Path) -> None:
    if block.lang in DOC_ONLY:
        pytest.skip(DOC_ONLY[block.lang])
    checks = [
        c for (lang, marker), c in BLOCKS.items() if lang == block.lang and marker in block.text
    ]
    assert len(checks) == 1, (
        f"{block.doc.name}: a {block.lang!r} block matches {len(checks)} "
        f"checks in BLOCKS (need exactly 1):\n{block.text}"
    )
    await checks[0](block.text, Ctx(kanal_server, tmp_path, block))
