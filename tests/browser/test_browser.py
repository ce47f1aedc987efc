"""The browser test infrastructure itself (tests/browser/browser.py and driver.js), against a
one-page aiohttp app: open, fill, click, wait for text; separate cookies per page; a failing
wait says what the page showed; pages are saved as PNGs with their console logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.browser.browser import Browser, BrowserError
from tests.webapp import served

pytestmark = pytest.mark.browser

PAGE = """<!doctype html>
<link rel="icon" href="data:,">
<form id="f"><input id="name"><button>Greet</button></form>
<ul id="out"><li hidden>hello hidden</li></ul>
<script>
  console.log("loaded");  // while new_page waits for the load: must not be lost
  document.getElementById("f").addEventListener("submit", (event) => {
    event.preventDefault();
    const item = document.createElement("li");
    item.textContent = "hello " + document.getElementById("name").value;
    document.getElementById("out").append(item);
    console.log("greeted");
  });
</script>
"""


@pytest.fixture
async def site() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    async with served(app) as base:
        yield f"{base}/"


async def test_fill_click_and_wait_for_text(site: str, browser: Browser) -> None:
    page = await browser.new_page(site)
    await page.fill("#name", "alice")
    await page.click("#f button")
    await page.wait_for_text("#out li", "hello alice")
    await page.type("#name", "!")
    await page.press("#name", "Enter")
    await page.wait_for_text("#out li", "hello alice!")
    assert await page.texts("#out li") == ["hello alice", "hello alice!"]
    await page.wait_for_no_text("#out li", "bob")
    await page.wait_for_no_text("#out li", "hidden")  # in the page, but not shown
    assert page.console == ["log: loaded", "log: greeted", "log: greeted"]


async def test_each_page_has_its_own_cookies(site: str, browser: Browser) -> None:
    first = await browser.new_page(site)
    await first.evaluate("document.cookie = 'session=one'")
    second = await browser.new_page(site)
    assert await second.evaluate("document.cookie") == ""
    assert await first.evaluate("document.cookie") == "session=one"


async def test_a_failing_wait_says_what_the_page_showed(site: str, browser: Browser) -> None:
    page = await browser.new_page(site)
    await page.fill("#name", "alice")
    await page.click("#f button")
    with pytest.raises(BrowserError) as failed:
        await page.wait_for_text("#out li", "hello bob", timeout=0.2)
    message = str(failed.value)
    assert '"#out li"' in message and '"hello bob"' in message, message
    assert '["hello alice"]' in message, message
    with pytest.raises(BrowserError, match="still a visible element"):
        await page.wait_for_no_text("#out li", "alice", timeout=0.2)


async def test_save_pages_writes_a_png_and_the_console_of_each_open_page(
    site: str, browser: Browser, tmp_path: Path
) -> None:
    first = await browser.new_page(site)
    await first.fill("#name", "alice")
    await first.click("#f button")
    await first.wait_for_text("#out li", "hello alice")
    closed = await browser.new_page(site, width=390, height=700, mobile=True)
    await closed.close()
    saved = await browser.save_pages(tmp_path)
    assert saved == [tmp_path / "page-1.png", tmp_path / "page-1.log"]
    assert saved[0].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert saved[1].read_text() == f"url: {site}\nlog: loaded\nlog: greeted\n"
