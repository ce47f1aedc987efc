"""One connection to the database behind a SQL app store, whatever its dialect.

Ownership rule: the three drivers (the stdlib sqlite3, psycopg 3, PyMySQL) are imported and
called here only, behind :meth:`Database.transaction`; the SQL itself is the callers', written
once with ``?`` placeholders, which this module turns into the driver's own.

The drivers are synchronous. That is on purpose: a node reads the store only in its background
refresh (:mod:`kanal.app_stores.cache`), in a thread, and the CLI is synchronous anyway.
"""

from __future__ import annotations

import importlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import quote

from kanal.app_stores.url import StoreUrl

__all__ = ["Cursor", "Database", "DriverMissing", "StoreUnavailable"]

#: Seconds to wait for a connection (and, in SQLite, for another writer's lock).
CONNECT_TIMEOUT = 5.0
_PG_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "2",
}
# The package each dialect's driver comes from: the extras of pyproject.toml (docs/apps.md).
_EXTRAS = {"postgresql": ("psycopg", "kanal[postgresql]"), "mysql": ("pymysql", "kanal[mysql]")}


class StoreUnavailable(Exception):
    """The database cannot be reached or answered with an error; the message says which."""


class DriverMissing(StoreUnavailable):
    """The URL needs a driver that is not installed (the message names the extra)."""


class Cursor(Protocol):
    """The part of a DB-API 2.0 cursor (PEP 249) the store uses."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Sequence[object] = ...) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> Any: ...


class Database:
    """Transactions on one database; safe to use from several threads (one at a time).

    SQLite opens the file for each transaction (microseconds, and a file that went away is
    then noticed at once); the network databases keep one connection, opened again after any
    error.
    """

    def __init__(self, url: StoreUrl) -> None:
        self.url = url
        self.dialect = url.dialect
        self._lock = threading.Lock()
        self._connection: Any = None
        self._driver: Any = sqlite3 if url.dialect == "sqlite" else None

    @property
    def integrity_error(self) -> type[Exception]:
        """The driver's error for a broken unique constraint."""
        error: type[Exception] = self._module().IntegrityError
        return error

    @contextmanager
    def transaction(self, *, create: bool = False) -> Iterator[Cursor]:
        """A cursor inside one transaction, committed when the block ends without an error.

        ``create``: SQLite may create the file (only the schema migration asks; otherwise a
        file that disappeared is an outage, not a new empty store).

        Raises:
            StoreUnavailable: the database cannot be reached or failed (the connection is
                dropped and opened again next time). A broken unique constraint raises the
                driver's :attr:`integrity_error` instead.
        """
        driver = self._module()
        with self._lock:
            try:
                connection = self._connect(create)
            except driver.Error as exc:
                raise StoreUnavailable(f"cannot connect: {_first_line(exc)}") from exc
            try:
                cursor = connection.cursor()
                if self.dialect == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")  # take the write lock now, not midway
                yield _Placeholders(cursor) if self.dialect != "sqlite" else cursor
                connection.commit()
            except driver.IntegrityError:
                self._rollback(connection)
                raise
            except driver.Error as exc:
                self._drop(connection)
                raise StoreUnavailable(_first_line(exc)) from exc
            except BaseException:
                self._rollback(connection)
                raise
            finally:
                if self.dialect == "sqlite":
                    connection.close()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._drop(self._connection)

    def _module(self) -> Any:
        if self._driver is None:
            module, extra = _EXTRAS[self.dialect]
            try:
                self._driver = importlib.import_module(module)
            except ImportError:
                raise DriverMissing(
                    f"{self.dialect} needs the {module} package: pip install '{extra}'"
                ) from None
        return self._driver

    def _connect(self, create: bool) -> Any:
        url = self.url
        if self.dialect == "sqlite":
            mode = "rwc" if create else "rw"
            target = f"file:{quote(url.path)}?mode={mode}"
            return sqlite3.connect(target, uri=True, timeout=CONNECT_TIMEOUT, isolation_level=None)
        if self._connection is None:
            if self.dialect == "postgresql":
                # TCP keepalives: a server that vanished mid-query is noticed in seconds
                # (libpq parameters; the URL's own settings win).
                self._connection = self._driver.connect(
                    url.url,
                    connect_timeout=int(CONNECT_TIMEOUT),
                    **{**_PG_KEEPALIVES, **dict(url.options)},
                )
            else:
                self._connection = self._driver.connect(
                    host=url.host,
                    port=url.port,
                    user=url.user or None,
                    password=url.password,
                    database=url.database,
                    charset="utf8mb4",
                    # rowcount = rows matched, not changed: an update that changes nothing
                    # still finds its app
                    client_flag=self._driver.constants.CLIENT.FOUND_ROWS,
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=CONNECT_TIMEOUT,
                    write_timeout=CONNECT_TIMEOUT,
                    **dict(url.options),
                )
        return self._connection

    def _rollback(self, connection: Any) -> None:
        try:
            connection.rollback()
        except self._module().Error:
            self._drop(connection)

    def _drop(self, connection: Any) -> None:
        if connection is self._connection:
            self._connection = None
        try:
            connection.close()
        except self._module().Error:
            pass  # already broken: dropping it is all that is left to do


class _Placeholders:
    """A cursor that takes ``?`` placeholders and hands the driver ``%s`` (psycopg, PyMySQL
    use the "format" paramstyle of PEP 249; the store's SQL holds no other ``?`` or ``%``)."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self._cursor.execute(sql.replace("?", "%s"), tuple(params))

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> Any:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        count: int = self._cursor.rowcount
        return count


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
