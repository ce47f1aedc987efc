"""The live console (docs/console.md) in headless Chromium, watching the chat example.

kanal runs with an admin token and a webhook endpoint; two people chat in their own windows
while a third window shows the console. Every wait is for something a page shows, with a
timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.browser.browser import Browser
from tests.browser.chatpage import join, send
from tests.browser.consolepage import Scene, open_console, scene

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture
async def made() -> AsyncIterator[Scene]:
    async with scene() as started:
        yield started


async def test_the_console_shows_the_chat_live(made: Scene, browser: Browser) -> None:
    console = await open_console(browser, made)
    assert await console.texts("#scope") == ["single node"]

    alice = await join(browser, made.chat_url, "alice")
    bob = await join(browser, made.chat_url, "bob")
    # Their connections and subscriptions, as they happen.
    await console.wait_for_text("#log tr.kind-connected", "origin http://127.0.0.1")
    await console.wait_for_text("#log tr.kind-subscribed", "presence-chat")
    # The channel list with both members (user_info carries the chat's display name).
    await console.wait_for_text("#channel-list", "2 subscribers · 2 users")
    await console.wait_for_text("#channel-list .members", "alice")
    await console.wait_for_text("#channel-list .members", "bob")
    # Typing is a client event; a message is an API trigger that excludes its sender.
    await alice.type("#text", "hi")
    await console.wait_for_text("#log tr.kind-client_event", "client-typing")
    await send(alice, "hello bob")
    await bob.wait_for_text("#messages .text", "hello bob")
    await console.wait_for_text("#log tr.kind-api_message", "message")
    await console.wait_for_text("#log tr.kind-api_message", "excluding")
    # The member_added webhooks, delivered, with their bodies.
    await console.wait_for_text("#webhooks li[data-kind=delivered]", "member_added")
    await console.wait_for_text("#webhooks", "HTTP 200")

    # A trigger from the console's form reaches a chat window.
    await console.fill("#trigger-channel", "presence-chat")
    await console.fill("#trigger-event", "message")
    await console.fill("#trigger-data", '{"from": "console", "text": "from the console", "at": 0}')
    await console.click("#trigger-submit")
    await console.wait_for_text("#trigger-result", "sent at")
    await bob.wait_for_text("#messages .text", "from the console")
    await alice.wait_for_text("#messages .text", "from the console")

    # bob leaves: his close, his removal held by the grace period, then delivered.
    await bob.close()
    await console.wait_for_text("#log tr.kind-disconnected", "close code")
    await console.wait_for_text("#webhooks li[data-kind=held]", "member_removed")
    await console.wait_for_text("#webhooks li[data-kind=delivered]", "member_removed")
    await console.wait_for_text("#channel-list", "1 subscriber · 1 user")
    names = [event["name"] for body in made.webhooks for event in body["events"]]
    assert names.count("member_removed") == 1  # what the console showed is what was sent


async def test_the_console_asks_for_the_token_again_when_it_is_wrong(
    made: Scene, browser: Browser
) -> None:
    page = await browser.new_page(made.console_url)
    await page.fill("#token", "not-the-token-at-all")
    await page.click("#token-form button")
    await page.wait_for_text("#login-error", "Wrong token.")
    assert await page.texts("#connections") == []  # the console stays hidden
    assert await page.evaluate("sessionStorage.getItem('kanal-console-token')") is None
