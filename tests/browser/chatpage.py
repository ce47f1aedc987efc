"""What a user does on the chat page (examples/chat/static/), for its tests and screenshots."""

from __future__ import annotations

from typing import Any

from tests.browser.browser import Browser, Page


async def log_in(browser: Browser, url: str, name: str, **size: Any) -> Page:
    """A new window (``size``: ``Browser.new_page``'s) logged in as ``name``."""
    page = await browser.new_page(url, **size)
    await page.fill("#name", name)
    await page.click("#login button")
    await page.wait_for_text("#me", name)
    return page


async def join(browser: Browser, url: str, name: str, **size: Any) -> Page:
    """Logged in and subscribed: the page lists its own user once subscription succeeded."""
    page = await log_in(browser, url, name, **size)
    await page.wait_for_text("#online li.me", name)
    return page


async def send(page: Page, text: str) -> None:
    """Send as the user does; the page shows its own message from the app's answer."""
    await page.fill("#text", text)
    await page.click("#composer button")
    await page.wait_for_text("#messages .message.mine .text", text)


async def shown(page: Page, text: str) -> int:
    """How many messages on the page have exactly this text."""
    return (await page.texts("#messages .message .text")).count(text)


def errors(page: Page) -> list[str]:
    """The page's console errors and uncaught exceptions."""
    return [line for line in page.console if line.startswith(("error:", "uncaught:"))]
