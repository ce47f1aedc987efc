"""examples/chat in headless Chromium, both variants, started with its README's commands.

``standalone``: ``./scripts/serve`` and ``examples/chat/run`` (the pusher SDK over kanal's
HTTP API); ``embedded``: ``examples/chat/run --embedded`` (kanal mounted in the app). Each
window is a separate browser context, so a separate login cookie: a separate user.

Every wait is for a condition in a page, with a timeout. "Exactly once" and "never appears"
are checked after a later event that must come after any duplicate: kanal delivers to each
connection in order, so once a message published later has arrived, an echo or a join
published earlier would have arrived too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.browser import servers
from tests.browser.browser import Browser
from tests.browser.chatpage import errors, join, log_in, send, shown

LEAVE_BOUND = 5.0  # seconds; examples/chat/README.md documents the same bound

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture(params=["standalone", "embedded"])
async def chat(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The chat's base URL, served by the variant the test is parametrised with."""
    if request.param == "standalone":
        async with servers.kanal() as kanal_port, servers.chat(kanal_port) as url:
            yield url
    else:
        async with servers.chat(None) as url:
            yield url


def test_readme_commands() -> None:
    """The commands the fixtures run are the README's, as written."""
    assert servers.readme_commands() == [
        "./scripts/serve",
        "examples/chat/run",
        "examples/chat/run --embedded",
        "./scripts/test tests/browser",
    ]
    assert f"within {LEAVE_BOUND:g} seconds" in servers.README.read_text()


async def test_two_users_see_each_other_talk_and_type(chat: str, browser: Browser) -> None:
    alice = await join(browser, chat, "alice")
    bob = await join(browser, chat, "bob")
    await alice.wait_for_text("#online li", "bob")
    await bob.wait_for_text("#online li", "alice")
    assert await alice.texts("#online li") == ["alice", "bob"]
    assert await bob.texts("#online li") == ["alice", "bob"]

    await alice.type("#text", "hello")  # client-typing, straight from alice's page to bob's
    await bob.wait_for_text("#typing", "alice is typing")
    await send(alice, "hello bob")
    await bob.wait_for_text("#messages .message", "hello bob")
    await bob.wait_for_no_text("#typing", "alice")  # her message ends her "is typing"

    await send(bob, "hi alice")  # published after "hello bob": behind any echo of it
    await alice.wait_for_text("#messages .message", "hi alice")
    assert await shown(alice, "hello bob") == 1  # her own, from the answer: no echo
    await send(alice, "bye")  # the same for bob's connection
    await bob.wait_for_text("#messages .message", "bye")
    assert (await shown(bob, "hello bob"), await shown(bob, "hi alice")) == (1, 1)
    assert (errors(alice), errors(bob)) == ([], [])


async def test_leaving_removes_the_user_from_the_others_list(chat: str, browser: Browser) -> None:
    alice = await join(browser, chat, "alice")
    bob = await join(browser, chat, "bob")
    carol = await join(browser, chat, "carol")
    await alice.wait_for_text("#online li", "carol")
    await alice.wait_for_text("#online li", "bob")

    await bob.close()  # the window: its WebSocket closes with it
    await alice.wait_for_no_text("#online li", "bob", timeout=LEAVE_BOUND)
    await alice.wait_for_text("#messages .notice", "bob left.")

    await carol.click("#logout")
    await carol.wait_for_text("#login label", "Your name")  # logged out: the login form again
    await alice.wait_for_no_text("#online li", "carol", timeout=LEAVE_BOUND)
    assert await alice.texts("#online li") == ["alice"]


async def test_a_refused_user_is_told_and_never_appears(chat: str, browser: Browser) -> None:
    alice = await join(browser, chat, "alice")
    mallory = await log_in(browser, chat, "mallory")  # logged in, but banned from the room
    # Shown only by the page's pusher:subscription_error handler, for status 403.
    await mallory.wait_for_text("#status", "You may not join this room (HTTP 403).")
    assert await mallory.texts("#online li") == []
    post = "fetch('/messages', {method: 'POST', body: JSON.stringify({text: 'hi'})})"
    assert await mallory.evaluate(f"{post}.then((r) => r.status)") == 403

    await join(browser, chat, "bob")  # a join after the refusal, so after any join of hers
    await alice.wait_for_text("#online li", "bob")
    assert await alice.texts("#online li") == ["alice", "bob"]
    assert not [n for n in await alice.texts("#messages .notice") if "mallory" in n]
