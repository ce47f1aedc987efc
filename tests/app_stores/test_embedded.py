"""An embedded node (kanal.asgi) serving a SQL store: every Realtime call names its app."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanal.app_stores.sql import SqlAppStore
from kanal.asgi import create_app
from kanal.config import App, AppsStoreSettings, Config
from kanal.protocol.errors import ApiError


async def test_realtime_needs_an_app_id_with_a_sql_store(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'apps.db'}"
    store = SqlAppStore.from_url(url)
    store.create(App(id="7", key="seven", secret="secret-7"))
    store.close()
    kanal_app = create_app(Config(apps_store=AppsStoreSettings(url=url)))
    await kanal_app.server.start()
    try:
        assert await kanal_app.realtime.trigger("chat", "hello", {}, app_id="7") == {}
        with pytest.raises(ApiError) as refused:
            await kanal_app.realtime.trigger("chat", "hello", {})
        assert refused.value.status == 400 and "pass app_id" in refused.value.message
    finally:
        await kanal_app.server.stop()
