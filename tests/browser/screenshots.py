"""The documentation's screenshots, taken in headless Chromium: ``scripts/screenshots``.

    scripts/screenshots            # every set in SHOTS, into docs/images/
    scripts/screenshots chat       # only these sets

Each entry of :data:`SHOTS` starts what it shows, drives pages through the
:class:`~tests.browser.browser.Browser` it is given, and writes PNGs into the directory it
is given, returning their paths. To add a set, write such a function and add it to
:data:`SHOTS`; the images are committed, so look at them before you do.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.browser import consolepage, servers
from tests.browser.browser import NO_CHROMIUM, ROOT, Browser, find_chromium
from tests.browser.chatpage import join, send

IMAGES = ROOT / "docs" / "images"
DESKTOP = {"width": 960, "height": 600}
PHONE = {"width": 390, "height": 680, "mobile": True}

Shot = Callable[[Browser, Path], Awaitable[list[Path]]]


async def chat(browser: Browser, images: Path) -> list[Path]:
    """examples/chat as the README runs it: three people, alice and bob talking, bob typing;
    alice's window on a desktop and bob's on a phone."""
    async with servers.kanal() as kanal_port, servers.chat(kanal_port) as url:
        alice = await join(browser, url, "alice", **DESKTOP)
        bob = await join(browser, url, "bob", **PHONE)
        await join(browser, url, "carol", **DESKTOP)
        await alice.wait_for_text("#online li", "carol")
        await send(alice, "Hi bob! Is the new release out?")
        await bob.wait_for_text("#messages .text", "release out?")
        await send(bob, "Yes, deployed ten minutes ago.")
        await alice.wait_for_text("#messages .text", "ten minutes ago")
        await send(alice, "Great, presence works too: I can see you and carol online.")
        await bob.wait_for_text("#messages .text", "presence works too")
        await bob.type("#text", "Typing indicators as well")
        await alice.wait_for_text("#typing", "bob is typing")
        return [
            await alice.screenshot(images / "chat-desktop.png"),
            await bob.screenshot(images / "chat-phone.png"),
        ]


async def console(browser: Browser, images: Path) -> list[Path]:
    """docs/console.md: the console watching the chat: two members, a message, a client
    event, webhooks (one removal held by the grace period), a trigger from the form."""
    async with consolepage.scene() as made:
        page = await consolepage.open_console(browser, made, width=1280, height=900)
        alice = await join(browser, made.chat_url, "alice", **DESKTOP)
        bob = await join(browser, made.chat_url, "bob", **DESKTOP)
        carol = await join(browser, made.chat_url, "carol", **DESKTOP)
        await send(alice, "Hi bob! Is the new release out?")
        await bob.type("#text", "Yes")
        await page.wait_for_text("#log tr.kind-client_event", "client-typing")
        await carol.close()
        await page.wait_for_text("#webhooks li[data-kind=held]", "member_removed")
        await page.fill("#trigger-channel", "presence-chat")
        await page.fill("#trigger-event", "message")
        await page.fill("#trigger-data", '{"from": "console", "text": "Deploy at 5pm", "at": 0}')
        await page.click("#trigger-submit")
        await alice.wait_for_text("#messages .text", "Deploy at 5pm")
        await page.wait_for_text("#channel-list", "2 subscribers · 2 users")
        shots = [await page.screenshot(images / "console.png", full_page=True)]
        phone = await consolepage.open_console(browser, made, **PHONE)
        await phone.wait_for_text("#channel-list", "alice")
        shots.append(await phone.screenshot(images / "console-phone.png"))
        return shots


SHOTS: dict[str, Shot] = {"chat": chat, "console": console}


async def take(names: list[str], images: Path) -> list[Path]:
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit(NO_CHROMIUM)
    written: list[Path] = []
    for name in names:
        # One browser per set: each starts from fresh windows and cookies.
        with tempfile.TemporaryDirectory(prefix="kanal-chromium-") as profile:
            async with Browser.launch(chromium, Path(profile)) as browser:
                written += await SHOTS[name](browser, images)
    return written


def main(argv: list[str]) -> int:
    unknown = sorted(set(argv) - set(SHOTS))
    if unknown:
        print(f"unknown: {', '.join(unknown)}; known: {', '.join(SHOTS)}", file=sys.stderr)
        return 2
    for path in asyncio.run(take(argv or list(SHOTS), IMAGES)):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
