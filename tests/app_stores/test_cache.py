"""CachedAppStore while the database is away: the last snapshot serves, unknown keys are
refused with a logged error, status() reports it, and the next refresh that works recovers.

SQLite is made unreachable by moving its file away (a store opens it without creating it
after the first contact, as a node does); PostgreSQL by a URL whose port has no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
from pathlib import Path

import pytest

from kanal.app_stores.cache import CachedAppStore
from kanal.app_stores.sql import SqlAppStore
from kanal.config import App

APP = App(id="1", key="app-key", secret="app-secret")


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_database_that_goes_away_keeps_the_cached_apps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "apps.db"
    sql = SqlAppStore.from_url(f"sqlite://{path}")
    sql.create(APP)
    cache = CachedAppStore(sql, ttl=60)
    assert await cache.refresh() and cache.status() == (True, "ok")
    path.rename(tmp_path / "moved.db")
    with caplog.at_level(logging.INFO, logger="kanal.apps"):
        assert not await cache.refresh()
        assert not await cache.refresh()  # still down: said once
        assert cache.by_key("app-key") == APP and cache.by_id("1") == APP
        assert cache.by_key("new-key") is None
    ready, detail = cache.status()
    assert not ready and detail.startswith("apps store unavailable: ")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, errors
    assert errors[0].startswith("apps store unavailable:") and "serving the 1 apps" in errors[0]
    assert "unknown app key new-key refused while the apps store is unavailable" in errors[1]
    (tmp_path / "moved.db").rename(path)
    sql.create(App(id="2", key="new-key", secret="s"))
    assert await cache.refresh() and cache.status() == (True, "ok")
    assert cache.by_key("new-key") is not None
    await cache.close()


async def test_a_database_down_from_the_start_refuses_every_key() -> None:
    url = f"postgresql://postgres@127.0.0.1:{_unused_port()}/kanal"
    cache = CachedAppStore(SqlAppStore.from_url(url), ttl=60)
    assert not await cache.refresh()
    assert cache.all() == () and cache.by_key("app-key") is None
    ready, detail = cache.status()
    assert not ready and "cannot connect" in detail, detail
    await cache.close()


async def test_a_row_that_no_longer_loads_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "apps.db"
    sql = SqlAppStore.from_url(f"sqlite://{path}")
    sql.create(APP)
    sql.create(App(id="2", key="other-key", secret="s"))
    # edited by hand into a value the loader refuses
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "UPDATE kanal_apps SET settings = ? WHERE app_id = '2'",
            (json.dumps({"secret": "s", "max_connections": -1}),),
        )
    cache = CachedAppStore(sql, ttl=60)
    with caplog.at_level(logging.ERROR, logger="kanal.apps"):
        assert await cache.refresh()
    assert [app.id for app in cache.all()] == ["1"]
    assert "app 2 is left out" in caplog.text and "max_connections" in caplog.text
    await cache.close()


async def test_a_database_that_stops_answering_is_down_after_the_timeout() -> None:
    # A server that accepts connections and never says a word: psycopg's handshake waits.
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    silent = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    cache = CachedAppStore(
        SqlAppStore.from_url(f"postgresql://postgres@127.0.0.1:{port}/kanal"), ttl=60, timeout=0.3
    )
    assert not await cache.refresh()
    assert cache.status() == (False, "apps store unavailable: no answer within 0.3 s")
    assert not await cache.refresh()
    assert len(held) == 1  # the second refresh waited for the first read, opened nothing
    for writer in held:  # the server goes away: the read fails at once, and so do the next
        writer.close()
    silent.close()
    await silent.wait_closed()
    assert not await cache.refresh()
    assert "no answer" not in cache.status()[1]
    await cache.close()


async def test_a_refresh_hands_changed_apps_on_and_reports_gone_ones(tmp_path: Path) -> None:
    """A rotated secret reaches open connections (on_changed, as a reload does); a disabled
    or deleted app is reported gone; an unchanged app is not reported at all."""
    sql = SqlAppStore.from_url(f"sqlite://{tmp_path / 'apps.db'}")
    other = App(id="2", key="key-2", secret="secret-2")
    sql.create(APP)
    sql.create(other)
    changed: list[App] = []
    gone: list[tuple[str, str]] = []
    cache = CachedAppStore(
        sql,
        ttl=60,
        on_changed=changed.append,
        on_gone=lambda app, why: gone.append((app.id, why)),
    )
    assert await cache.refresh()
    rotated = App(
        id="1",
        key="app-key",
        secret="new-secret",
        previous_secret="app-secret",
        previous_secret_expires_at=2_000_000_000.0,
    )
    sql.replace(rotated)
    sql.delete("2")
    assert await cache.refresh()
    assert changed == [rotated] and gone == [("2", "deleted")]
    assert cache.by_key("app-key") == rotated
