"""``[apps_store]``: the URL forms, and how the settings load, combine and print."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanal.app_stores.url import parse_store_url, store_url_error
from kanal.settings import ConfigError, load_config
from kanal.settings.render import dump_config


def test_sqlite_urls_take_everything_after_the_scheme_as_the_path() -> None:
    assert parse_store_url("sqlite:///var/lib/kanal/apps.db").path == "/var/lib/kanal/apps.db"
    assert parse_store_url("sqlite://apps.db").path == "apps.db"
    assert parse_store_url("sqlite:///tmp/a%20b.db").path == "/tmp/a b.db"


def test_server_urls_are_split_for_the_driver() -> None:
    url = parse_store_url("mysql://kanal:p%40ss@db.internal/apps?ssl_disabled=1")
    assert (url.dialect, url.host, url.port, url.user) == ("mysql", "db.internal", 3306, "kanal")
    assert (url.password, url.database, url.options) == ("p@ss", "apps", (("ssl_disabled", "1"),))
    assert parse_store_url("mariadb://root@h:3307/t").port == 3307
    pg = parse_store_url("postgres://kanal@db.internal/apps?sslmode=require")
    assert (pg.dialect, pg.port, pg.url) == (
        "postgresql",
        5432,
        "postgres://kanal@db.internal/apps?sslmode=require",
    )
    assert "p@ss" not in repr(url) and "p%40ss" not in repr(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://localhost/0", "must be empty or a sqlite://, postgresql:// or mysql:// URL"),
        ("sqlite://", "needs a file path"),
        ("postgresql://db.internal", "needs a database name"),
        ("mysql://db.internal:port/x", "is not a valid URL"),
    ],
)
def test_unusable_urls_say_why(url: str, problem: str) -> None:
    reason = store_url_error(url)
    assert reason is not None and reason.startswith(problem), reason
    with pytest.raises(ValueError, match=problem):
        parse_store_url(url)


def test_the_store_loads_from_file_environment_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "kanal.toml"
    path.write_text('[apps_store]\nurl = "sqlite:///a.db"\nttl = 2\n')
    config = load_config(str(path))
    assert (config.apps_store.url, config.apps_store.ttl) == ("sqlite:///a.db", 2.0)
    env = {"KANAL_APPS_STORE_URL": "sqlite:///b.db"}
    assert load_config(str(path), env).apps_store.url == "sqlite:///b.db"
    flags = {"apps_store_url": "sqlite:///c.db", "apps_store_ttl": "0.5"}
    config = load_config(str(path), env, flags)
    assert (config.apps_store.url, config.apps_store.ttl) == ("sqlite:///c.db", 0.5)
    with pytest.raises(ConfigError, match=r"KANAL_APPS_STORE_URL: apps_store\.url: must be empty"):
        load_config(None, {"KANAL_APPS_STORE_URL": "redis://x"})


def test_file_apps_and_a_store_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "kanal.toml"
    path.write_text('[[apps]]\nid = "1"\nkey = "k"\nsecret = "s"\n')
    with pytest.raises(ConfigError, match=r"KANAL_APPS_STORE_URL: apps_store\.url: the file has"):
        load_config(str(path), {"KANAL_APPS_STORE_URL": "sqlite:///a.db"})


def test_check_config_masks_the_store_password() -> None:
    config = load_config(None, {"KANAL_APPS_STORE_URL": "postgresql://kanal:hunter2@db/apps"})
    dumped = dump_config(config)
    assert '[apps_store]\nurl = "postgresql://kanal:***@db/apps"\nttl = 5.0' in dumped
    assert "hunter2" not in dumped and "hunter2" not in repr(config)
