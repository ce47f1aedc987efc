"""``redis_url`` forms (:mod:`kanal.adapters.redis_connect`): what each names, and the
settings check that refuses the rest at start-up. Running them: tests/test_redis_deployments.py
and tests/test_cluster_sentinel.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from kanal.adapters.redis_connect import parse_redis_url
from kanal.settings import ConfigError, load_config


def test_one_redis_keeps_its_url() -> None:
    target = parse_redis_url("rediss://kanal:pw@redis.example.com:6380/2")
    assert (target.kind, target.tls, target.nodes) == ("single", True, ())


def test_sentinel_names_its_sentinels_master_and_database() -> None:
    url = "rediss+sentinel://kanal:p%40ss@s1:26379,s2:26380/mymaster/3?ssl_ca_certs=/ca.pem"
    target = parse_redis_url(url)
    assert target.kind == "sentinel" and target.tls
    assert target.nodes == (("s1", 26379), ("s2", 26380))
    assert target.service == "mymaster"
    assert target.options == {
        "username": "kanal",
        "password": "p@ss",
        "db": 3,
        "ssl_ca_certs": "/ca.pem",
    }


def test_sentinel_database_defaults_to_zero() -> None:
    target = parse_redis_url("redis+sentinel://s1:26379/mymaster")
    assert (target.service, target.options["db"], target.tls) == ("mymaster", 0, False)


def test_cluster_seeds() -> None:
    target = parse_redis_url("redis+cluster://:secret@r1:7000,[::1]:7001")
    assert target.kind == "cluster"
    assert target.nodes == (("r1", 7000), ("::1", 7001))
    assert target.options["password"] == "secret"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://r1:6379", "must be a redis://"),
        ("redis+sentinel://s1:26379", "names the master"),
        ("redis+sentinel://s1:26379/a/0/extra", "names the master"),
        ("redis+sentinel://s1/mymaster", "must be host:port"),
        ("redis+cluster://r1:7000/1", "database 0 only"),
        ("redis+cluster://r1:x", "must be host:port"),
    ],
)
def test_malformed_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_redis_url(url)


def test_the_setting_is_checked_at_load_time(tmp_path: Path) -> None:
    path = tmp_path / "kanal.toml"
    path.write_text('[scaling]\nadapter = "redis"\nredis_url = "redis+sentinel://s1:1"\n')
    with pytest.raises(ConfigError, match="names the master"):
        load_config(str(path))
    path.write_text('[scaling]\nadapter = "redis"\nredis_url = "redis+cluster://r1:7000"\n')
    assert load_config(str(path)).scaling.redis_url == "redis+cluster://r1:7000"
