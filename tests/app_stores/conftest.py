"""Fixtures for the app store suite: a fresh database per test run on every SQL backend.

Ownership rule: every database a test uses is made and dropped here. SQLite is a file in the
test's temporary directory and always runs. PostgreSQL and MariaDB use the servers named by
``KANAL_TEST_POSTGRES_URL`` and ``KANAL_TEST_MYSQL_URL`` (by default the local ones: PostgreSQL
on 5432 as ``postgres``, MariaDB on 3306 as ``root``); a run creates one database
``kanal_test_<random>`` on each, empties it after every test and drops it at the end. A server
that does not answer skips its tests, saying why.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kanal.app_stores.database import Database, StoreUnavailable
from kanal.app_stores.url import parse_store_url

SQL_BACKENDS = ("sqlite", "postgresql", "mysql")
DatabaseUrl = Callable[[str], str]
ADMIN_URLS = {
    "postgresql": os.environ.get(
        "KANAL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    ),
    "mysql": os.environ.get("KANAL_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}


def _admin(backend: str) -> Any:
    """An autocommit driver connection to the server's admin database (CREATE DATABASE)."""
    url = parse_store_url(ADMIN_URLS[backend])
    if backend == "postgresql":
        import psycopg

        return psycopg.connect(url.url, autocommit=True, connect_timeout=3)
    import pymysql

    return pymysql.connect(
        host=url.host, port=url.port, user=url.user, password=url.password, connect_timeout=3
    )


@pytest.fixture(scope="session")
def server_databases() -> Iterator[dict[str, str]]:
    """backend -> URL of a database made for this run, or the reason it cannot be had."""
    name = f"kanal_test_{secrets.token_hex(4)}"
    made: dict[str, str] = {}
    for backend, admin_url in ADMIN_URLS.items():
        try:
            with _admin(backend) as connection:
                connection.cursor().execute(f"CREATE DATABASE {name}")
        except Exception as exc:
            made[backend] = f"skip: {backend} at {admin_url} is not reachable ({exc})"
            continue
        base = admin_url.rsplit("/", 1)[0]
        made[backend] = f"{base}/{name}"
    yield made
    for backend, url in made.items():
        if not url.startswith("skip:"):
            force = " WITH (FORCE)" if backend == "postgresql" else ""  # PostgreSQL 13+
            with _admin(backend) as connection:
                connection.cursor().execute(f"DROP DATABASE {name}{force}")


@pytest.fixture
def database_url(tmp_path: Path, server_databases: dict[str, str]) -> Iterator[DatabaseUrl]:
    """Factory: the URL of an empty SQL store on ``backend`` (skips the test when that server
    is not reachable); the tables it got are dropped after the test."""
    used: list[str] = []

    def url(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite://{tmp_path / 'apps.db'}"
        made = server_databases[backend]
        if made.startswith("skip:"):
            pytest.skip(made.removeprefix("skip: "))
        used.append(made)
        return made

    yield url
    for made in used:
        drop_tables(made)


@pytest.fixture(params=SQL_BACKENDS)
def store_url(request: pytest.FixtureRequest, database_url: DatabaseUrl) -> str:
    """The URL of an empty SQL store, on each backend."""
    return database_url(request.param)


def drop_tables(url: str) -> None:
    database = Database(parse_store_url(url))
    try:
        with database.transaction() as cursor:
            for table in ("kanal_apps", "kanal_meta"):
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
    except StoreUnavailable:
        pass  # a test that made its database unreachable on purpose
    finally:
        database.close()
