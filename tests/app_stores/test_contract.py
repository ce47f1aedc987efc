"""The AppStore contract (kanal.apps.AppStore), run on every store: TOML, SQLite, PostgreSQL,
MariaDB; then the write side that only the SQL stores have.

Ownership rule: one suite states what a node may rely on; each ``store`` parameter must pass
all of it unchanged. A SQL store is read as a node reads it: through
:class:`~kanal.app_stores.cache.CachedAppStore` after a refresh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from kanal.app_stores.cache import CachedAppStore
from kanal.app_stores.database import StoreUnavailable
from kanal.app_stores.schema import SCHEMA_VERSION
from kanal.app_stores.sql import AppConflict, AppNotFound, SqlAppStore
from kanal.apps import AppStore, StaticAppStore
from kanal.config import App, WebhookTarget

from .conftest import SQL_BACKENDS, DatabaseUrl

MakeStore = Callable[[list[App]], Awaitable[AppStore]]

#: Every setting away from its default, so that a store that drops one fails.
FULL = App(
    id="4242",
    key="full-key",
    secret="full-secret",
    enabled=False,
    previous_secret="old-secret",
    previous_secret_expires_at=1_900_000_000.5,
    enable_client_messages=True,
    enable_encrypted_client_messages=True,
    enable_user_authentication=True,
    user_authentication_timeout=12.5,
    enable_subscription_count=True,
    enable_encrypted_subscription_count=True,
    enable_watchlist_events=True,
    require_tls=True,
    allowed_origins=("https://a.example", "https://*.b.example"),
    activity_timeout=60,
    pong_timeout=10.0,
    max_connections=5,
    max_client_events_per_second=3,
    max_presence_members=7,
    max_presence_user_info_bytes=512,
    max_presence_user_id_length=64,
    max_channel_name_length=100,
    max_event_name_length=50,
    max_event_payload_bytes=2048,
    max_event_batch_size=4,
    max_channels_per_trigger=9,
    max_watchlist_size=11,
    max_backend_requests_per_second=13,
    max_read_requests_per_second=17,
    cache_ttl=60,
    max_timestamp_skew=30,
    batch_webhooks=True,
    webhooks=(
        WebhookTarget(
            url="https://hooks.example/x",
            event_types=("channel_occupied", "member_added"),
            headers=(("Authorization", "Bearer t"),),
            filter_channel_prefix="presence-",
            filter_channel_suffix="-room",
        ),
    ),
)
PLAIN = App(id="1", key="plain-key", secret="plain-secret")


def test_full_app_sets_every_setting() -> None:
    defaults = App(id="x", key="y", secret="z")
    for field in dataclasses.fields(App):
        if field.name != "webhook_url":  # folded into webhooks by the loader
            assert getattr(FULL, field.name) != getattr(defaults, field.name), field.name


@pytest.fixture(params=("toml", *SQL_BACKENDS))
async def make_store(
    request: pytest.FixtureRequest, database_url: DatabaseUrl
) -> AsyncIterator[MakeStore]:
    """Factory: the store holding ``apps``, read as a node reads it."""
    caches: list[CachedAppStore] = []

    async def make(apps: list[App]) -> AppStore:
        if request.param == "toml":
            return StaticAppStore(apps)
        sql = SqlAppStore.from_url(database_url(request.param))
        for app in apps:
            sql.create(app)
        cache = CachedAppStore(sql, ttl=60)
        caches.append(cache)
        assert await cache.refresh()
        return cache

    yield make
    for cache in caches:
        await cache.close()


async def test_finds_apps_by_key_and_by_id(make_store: MakeStore) -> None:
    store = await make_store([PLAIN, FULL])
    assert store.by_key("plain-key") == PLAIN
    assert store.by_id("1") == PLAIN
    assert store.by_key("full-key") == FULL
    assert store.by_id("4242") == FULL
    assert sorted(app.id for app in store.all()) == ["1", "4242"]


async def test_unknown_key_and_id_are_none(make_store: MakeStore) -> None:
    store = await make_store([PLAIN])
    assert store.by_key("1") is None  # an id is not a key
    assert store.by_id("plain-key") is None
    assert store.by_key("nope") is None and store.by_id("2") is None


async def test_an_empty_store_has_no_apps(make_store: MakeStore) -> None:
    store = await make_store([])
    assert store.all() == () and store.by_key("plain-key") is None


async def test_every_setting_round_trips(make_store: MakeStore) -> None:
    store = await make_store([FULL])
    assert store.by_id(FULL.id) == FULL
    assert dataclasses.asdict(store.all()[0]) == dataclasses.asdict(FULL)


# --- the SQL stores' write side ----------------------------------------------------------


@pytest.fixture
def sql(store_url: str) -> Iterator[SqlAppStore]:
    store = SqlAppStore.from_url(store_url)
    yield store
    store.close()


def test_create_get_replace_delete(sql: SqlAppStore) -> None:
    sql.create(PLAIN)
    assert sql.get("1") == PLAIN
    changed = dataclasses.replace(PLAIN, key="new-key", max_connections=3, enabled=False)
    sql.replace(changed)
    assert sql.get("1") == changed
    assert sql.load()[1] == (changed,)
    sql.delete("1")
    with pytest.raises(AppNotFound):
        sql.get("1")
    assert sql.load()[1] == ()


def test_replace_with_the_same_values_still_finds_the_app(sql: SqlAppStore) -> None:
    sql.create(PLAIN)
    sql.replace(PLAIN)
    sql.replace(PLAIN)  # MySQL counts matched rows, not changed ones (CLIENT.FOUND_ROWS)
    assert sql.get("1") == PLAIN


def test_ids_and_keys_are_unique(sql: SqlAppStore) -> None:
    sql.create(PLAIN)
    with pytest.raises(AppConflict):
        sql.create(dataclasses.replace(PLAIN, key="other"))
    with pytest.raises(AppConflict):
        sql.create(dataclasses.replace(PLAIN, id="2"))
    sql.create(FULL)
    with pytest.raises(AppConflict):
        sql.replace(dataclasses.replace(FULL, key=PLAIN.key))
    assert sql.get(FULL.id) == FULL  # the failed write left nothing behind


def test_unknown_ids_are_not_found(sql: SqlAppStore) -> None:
    with pytest.raises(AppNotFound):
        sql.replace(PLAIN)
    with pytest.raises(AppNotFound):
        sql.delete("1")


def test_every_write_raises_the_revision_and_reads_do_not(sql: SqlAppStore) -> None:
    first = sql.revision()
    sql.create(PLAIN)
    created = sql.revision()
    assert created > first
    sql.load(), sql.get("1")
    assert sql.revision() == created
    sql.replace(dataclasses.replace(PLAIN, enabled=False))
    assert sql.revision() > created
    with pytest.raises(AppConflict):
        sql.create(PLAIN)
    revision = sql.revision()
    sql.delete("1")
    assert sql.revision() > revision
    assert sql.load()[0] == sql.revision()


def test_schema_is_created_once_and_shared(store_url: str, sql: SqlAppStore) -> None:
    sql.create(PLAIN)
    again = SqlAppStore.from_url(store_url)
    try:
        again.migrate()  # a second process, or a restart: nothing to do, nothing lost
        assert again.get("1") == PLAIN
        with again.database.transaction() as cursor:
            cursor.execute("SELECT value FROM kanal_meta WHERE name = ?", ("schema_version",))
            assert cursor.fetchone()[0] == SCHEMA_VERSION
    finally:
        again.close()


def test_a_newer_schema_is_refused(store_url: str, sql: SqlAppStore) -> None:
    sql.migrate()
    with sql.database.transaction() as cursor:
        cursor.execute(
            "UPDATE kanal_meta SET value = ? WHERE name = ?", (SCHEMA_VERSION + 1, "schema_version")
        )
    newer = SqlAppStore.from_url(store_url)
    try:
        with pytest.raises(StoreUnavailable, match="newer than this kanal"):
            newer.revision()
    finally:
        newer.close()


async def test_refresh_reports_disabled_and_deleted_apps(sql: SqlAppStore) -> None:
    other = dataclasses.replace(PLAIN, id="2", key="other-key")
    for app in (PLAIN, other, FULL):
        sql.create(app)
    gone: list[tuple[str, str]] = []
    cache = CachedAppStore(sql, ttl=60, on_gone=lambda app, why: gone.append((app.id, why)))
    assert await cache.refresh()
    assert gone == []
    sql.replace(dataclasses.replace(PLAIN, enabled=False))
    sql.delete("2")
    sql.replace(dataclasses.replace(FULL, enabled=True))
    assert cache.by_key("other-key") is not None  # until the next refresh
    assert await cache.refresh()
    assert sorted(gone) == [("1", "disabled"), ("2", "deleted")]
    disabled = cache.by_key("plain-key")
    assert disabled is not None and not disabled.enabled
    assert cache.by_key("other-key") is None and cache.by_id("2") is None
    assert await cache.refresh() and len(gone) == 2  # unchanged revision: nothing reloaded
