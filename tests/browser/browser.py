"""Headless Chromium for tests, from Python: the Python side of tests/browser/driver.js.

The driver runs playwright-core in Node with Debian's Chromium (no browser download) and takes
JSON commands over stdin; this module starts it and gives tests a small API::

    async with Browser.launch(chromium, profile_dir) as browser:   # or the `browser` fixture
        page = await browser.new_page("http://127.0.0.1:8000/")    # a new window, own cookies
        await page.fill("#name", "alice")
        await page.click("#login button")
        await page.wait_for_text("#online", "alice", timeout=5)
        await page.screenshot(path)

Every wait is a condition with a timeout, checked in the page; when it fails the error says
what the selector's elements did show. :meth:`Browser.save_pages` writes a screenshot and the
console log of every open page (the ``browser`` fixture calls it when a test fails).
"""

# ruff: noqa: ASYNC109  -- `timeout=` per call is this API's point, as in tests/e2e/jsclient.py
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.wsclient import end_process

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().with_name("driver.js")
PLAYWRIGHT = ROOT / "node_modules" / "playwright-core"
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: tests run as root in containers. The rest keeps a machine without internet
# quiet: no GPU probing, no background requests, no component updates.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
)
WAIT = 5.0  # default seconds for a wait; the driver's actions (click, fill) allow 10
SLACK = 10.0  # beyond a command's own timeout, before the driver counts as hung


class BrowserError(AssertionError):
    """A command failed in the browser (a wait timed out, a selector matched nothing), or
    the driver died; the message says which page and what it showed."""


def find_chromium() -> Path | None:
    """``$KANAL_CHROMIUM``, else Debian's /usr/bin/chromium, else ``chromium`` on PATH."""
    if configured := os.environ.get("KANAL_CHROMIUM"):
        return Path(configured) if os.access(configured, os.X_OK) else None
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


NO_CHROMIUM = (
    "no chromium ($KANAL_CHROMIUM, /usr/bin/chromium or on PATH): ./scripts/test installs "
    "Debian's when run as root; else sudo apt-get install -y --no-install-recommends chromium"
)


class Page:
    """One browser window (its own context, so its own cookies: a second user)."""

    def __init__(self, browser: Browser, page_id: int, url: str) -> None:
        self.browser = browser
        self.id = page_id
        self.url = url
        self.closed = False

    @property
    def console(self) -> list[str]:
        """The page's console messages and uncaught errors so far, in order."""
        return self.browser.console.setdefault(self.id, [])

    def __repr__(self) -> str:
        return f"<page {self.id} {self.url}>"

    async def _do(self, cmd: str, timeout: float = WAIT, **args: Any) -> Any:
        try:
            return await self.browser.command(cmd, timeout=timeout, page=self.id, **args)
        except BrowserError as exc:
            raise BrowserError(f"{self!r}: {cmd}: {exc}") from None

    async def goto(self, url: str) -> None:
        self.url = url
        await self._do("goto", url=url)

    async def fill(self, selector: str, text: str) -> None:
        """Set the field's value at once (one ``input`` event)."""
        await self._do("fill", selector=selector, text=text)

    async def type(self, selector: str, text: str) -> None:
        """Type after the field's text key by key (an ``input`` event per key), as a person
        does."""
        await self._do("type", selector=selector, text=text)

    async def press(self, selector: str, key: str) -> None:
        await self._do("press", selector=selector, key=key)

    async def click(self, selector: str) -> None:
        await self._do("click", selector=selector)

    async def wait_for_text(self, selector: str, text: str, timeout: float = WAIT) -> None:
        """Until a visible element matching ``selector`` shows ``text`` (in its innerText)."""
        await self._wait("wait_for_text", selector, text, timeout)

    async def wait_for_no_text(self, selector: str, text: str, timeout: float = WAIT) -> None:
        """Until no visible element matching ``selector`` shows ``text``."""
        await self._wait("wait_for_no_text", selector, text, timeout)

    async def _wait(self, cmd: str, selector: str, text: str, timeout: float) -> None:
        ms = round(timeout * 1000)
        await self._do(cmd, timeout, selector=selector, text=text, timeoutMs=ms)

    async def texts(self, selector: str) -> list[str]:
        """The innerText of every visible element matching ``selector``, in document order
        (hidden ones are left out: the user does not see them)."""
        found: list[str] = await self._do("texts", selector=selector)
        return found

    async def evaluate(self, expression: str) -> Any:
        """A JavaScript expression's value in the page (a Promise is awaited)."""
        return await self._do("evaluate", expression=expression)

    async def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        await self._do("screenshot", path=str(path), fullPage=full_page)
        return path

    async def close(self) -> None:
        """Close the window, as a user does: its connections close with it."""
        self.closed = True
        await self._do("close_page")


class Browser:
    """One headless Chromium, driven through tests/browser/driver.js."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._readers: list[asyncio.Task[None]] = []
        self.pages: list[Page] = []  # every page opened; ``open_pages`` are those not closed
        # Page id -> console lines; kept here, as a page logs while it loads, before new_page
        # has returned its Page.
        self.console: dict[int, list[str]] = {}
        self.version = ""

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, chromium: Path, profile_dir: Path) -> AsyncIterator[Browser]:
        """Start the driver and Chromium; on exit close both. Chromium's user-data directory
        is made fresh inside ``profile_dir`` (playwright makes it in the driver's TMPDIR)."""
        if not (PLAYWRIGHT / "package.json").is_file():
            raise BrowserError(f"{PLAYWRIGHT} is missing: run npm ci (./scripts/test does)")
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(profile_dir)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        browser = cls(proc)
        browser._readers = [
            asyncio.create_task(browser._read()),
            asyncio.create_task(browser._log()),
        ]
        try:
            await asyncio.wait_for(browser._ready, SLACK)
            launched = await browser.command(
                "launch", timeout=20, executablePath=str(chromium), args=list(CHROMIUM_ARGS)
            )
            browser.version = launched["version"]
            yield browser
        finally:
            await browser._close()

    @property
    def open_pages(self) -> list[Page]:
        return [page for page in self.pages if not page.closed]

    async def new_page(
        self, url: str, *, width: int = 1000, height: int = 700, mobile: bool = False
    ) -> Page:
        """A new window (fresh cookies) showing ``url``; ``mobile`` emulates a phone's touch
        and pixel density (give a phone's ``width`` and ``height`` too)."""
        size = {"width": width, "height": height, "mobile": mobile}
        opened = await self.command("new_page", timeout=15, url=url, **size)
        page = Page(self, opened["page"], url)
        self.pages.append(page)
        return page

    async def save_pages(self, directory: Path) -> list[Path]:
        """A screenshot (``page-N.png``) and the console log (``page-N.log``) of every open
        page into ``directory``; the paths written. A page that cannot be captured is noted
        in its log instead."""
        saved: list[Path] = []
        for page in self.open_pages:
            log = directory / f"page-{page.id}.log"
            lines = [f"url: {page.url}", *page.console]
            try:
                saved.append(await page.screenshot(directory / f"page-{page.id}.png"))
            except BrowserError as exc:
                lines.append(f"no screenshot: {exc}")
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("\n".join(lines) + "\n")
            saved.append(log)
        return saved

    async def command(self, cmd: str, *, timeout: float = WAIT, **args: Any) -> Any:
        """Send one driver command and wait for its answer (``timeout`` plus some slack)."""
        if self._proc.returncode is not None or self._proc.stdin is None:
            raise BrowserError(f"the driver has exited\n{self._tail()}")
        command_id = next(self._ids)
        answer = self._waiting[command_id] = asyncio.get_running_loop().create_future()
        self._proc.stdin.write(json.dumps({"id": command_id, "cmd": cmd, **args}).encode() + b"\n")
        try:
            await self._proc.stdin.drain()
            return await asyncio.wait_for(answer, timeout + SLACK)
        except TimeoutError:
            raise BrowserError(f"{cmd}: no answer from the driver\n{self._tail()}") from None
        except ConnectionError:
            raise BrowserError(f"{cmd}: the driver has exited\n{self._tail()}") from None
        finally:
            self._waiting.pop(command_id, None)

    def _answer(self, record: dict[str, Any]) -> None:
        answer = self._waiting.get(record.get("id", -1))
        if answer is None or answer.done():
            return
        if record.get("ok"):
            answer.set_result(record.get("result"))
        else:
            answer.set_exception(BrowserError(str(record.get("error"))))

    def _event(self, record: dict[str, Any]) -> None:
        if record["event"] == "ready" and not self._ready.done():
            self._ready.set_result(None)
        elif record["event"] == "console":
            self.console.setdefault(record["page"], []).append(record["text"])

    async def _read(self) -> None:
        assert self._proc.stdout is not None
        async for raw in self._proc.stdout:
            try:
                record = json.loads(raw)
            except ValueError:  # not the driver's: keep it for failure messages
                self._stderr.append(raw.decode(errors="replace").rstrip())
                continue
            if "event" in record:
                self._event(record)
            else:
                self._answer(record)
        exited = BrowserError(f"the driver has exited\n{self._tail()}")
        for waiting in [self._ready, *self._waiting.values()]:
            if not waiting.done():
                waiting.set_exception(exited)

    async def _log(self) -> None:
        assert self._proc.stderr is not None
        async for raw in self._proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    def _tail(self) -> str:
        return "--- driver stderr ---\n" + "\n".join(self._stderr)

    async def _close(self) -> None:
        """Close Chromium through the driver, then make sure the driver is gone."""
        if self._proc.returncode is None:
            with contextlib.suppress(BrowserError):
                await self.command("close")
        await end_process(self._proc, SLACK)
        for reader in self._readers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader, 1)
        if not self._ready.done():
            self._ready.cancel()
