"""Fixtures for the end-to-end tests that drive pusher-js (see jsclient.py and driver.js).

The server under test comes from ``kanal_server`` in tests/conftest.py.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .jsclient import REPO_ROOT, JsDriver

_SETUP_HINT = "run the README test command (`npm ci` in the repository root installs pusher-js)"
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an ``e2e`` test (select with ``-m e2e``)."""
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _check_node_modules() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not on PATH; the e2e tests need Node >= 18 ({_SETUP_HINT})")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    major = version.stdout.strip().lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 18:
        pytest.fail(f"node {version.stdout.strip()!r} is too old: the e2e tests need Node >= 18")
    for package in ("pusher-js", "pusher"):
        if not (REPO_ROOT / "node_modules" / package / "package.json").is_file():
            pytest.fail(f"node_modules/{package} is missing: {_SETUP_HINT}")


@pytest.fixture(params=["serve", "asgi"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every end-to-end test runs against ``kanal serve``'s transport and the ASGI app."""
    value: str = request.param
    return value


@pytest.fixture(params=["ws", "xhr_streaming", "xhr_polling"])
def client_transport(request: pytest.FixtureRequest, js: JsDriver) -> str:
    """pusher-js's transport for the tests that ask for it: the same scenario over WebSocket
    and over each of kanal's HTTP transports (docs/http-fallback.md)."""
    value: str = request.param
    js.transport = value
    return value


@pytest.fixture(scope="session")
def node_modules() -> None:
    """Fails (never skips) when the Node side of the harness is not installed."""
    _check_node_modules()


@pytest.fixture
async def js(node_modules: None) -> AsyncIterator[JsDriver]:
    """A fresh pusher-js driver process per test; all its clients disconnect at teardown."""
    async with JsDriver.start() as driver:
        yield driver
