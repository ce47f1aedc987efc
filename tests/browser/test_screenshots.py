"""scripts/screenshots' sets (tests/browser/screenshots.py) run, here into a temporary
directory instead of docs/images/, and write PNGs of the documented sizes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.browser import screenshots
from tests.browser.browser import Browser

pytestmark = pytest.mark.browser


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


async def test_chat_shots(browser: Browser, tmp_path: Path) -> None:
    written = await screenshots.chat(browser, tmp_path)
    assert written == [tmp_path / "chat-desktop.png", tmp_path / "chat-phone.png"]
    assert png_size(written[0]) == (960, 600)
    assert png_size(written[1]) == (780, 1360)  # a phone's 390 x 680 at 2 device pixels


def test_unknown_sets_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert screenshots.main(["nope"]) == 2
    assert "unknown: nope; known: chat" in capsys.readouterr().err
