"""The ``browser`` fixture: headless Chromium for one test, with screenshots when it fails.

A test that takes ``browser`` gets a :class:`~tests.browser.browser.Browser` (new pages are
separate windows with their own cookies), launched with a fresh user-data directory that is
deleted afterwards. When the test fails, every page still open is saved into
``test-artifacts/<test>/`` (a PNG and the page's console log) and the paths are printed with
the failure. Ask for the fixtures that start your servers *before* ``browser``: pytest tears
fixtures down in reverse order, so the pages are captured while the servers still answer.
The tests skip, saying why, only when no Chromium can be found.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from tests.browser.browser import NO_CHROMIUM, ROOT, Browser, find_chromium

ARTIFACTS = ROOT / "test-artifacts"
FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test itself failed, for the fixture's teardown to see."""
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


def artifacts_dir(item: pytest.Item) -> Path:
    return ARTIFACTS / re.sub(r"[^\w.-]+", "_", item.nodeid).strip("_")


@pytest.fixture
async def browser(request: pytest.FixtureRequest) -> AsyncIterator[Browser]:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(NO_CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="kanal-chromium-") as profile:
        async with Browser.launch(chromium, Path(profile)) as launched:
            yield launched
            if request.node.stash.get(FAILED, False):
                await save(launched, artifacts_dir(request.node))


async def save(browser: Browser, directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)  # only this run's pages
    saved = await browser.save_pages(directory)
    # Teardown output is shown with the test's failure.
    print(f"browser pages at the failure ({len(saved)} files): {directory}")
    for path in saved:
        print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
