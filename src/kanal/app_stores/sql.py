"""SqlAppStore: the apps in a SQL database (SQLite, PostgreSQL, MySQL/MariaDB).

Ownership rule: the rows of ``kanal_apps`` and the ``revision`` row of ``kanal_meta`` are
written here only, each write and its revision bump in one transaction. A row is an app's
``[[apps]]`` table: ``app_id`` and ``app_key`` are columns (looked up, unique), the other
settings are the JSON of that table (:func:`kanal.settings.render.app_table`), read back
through the same loader as the file (:func:`kanal.settings.loaders.app_from_table`). So a
setting added to :mod:`kanal.settings.table` is stored without a migration, and a row is
checked exactly as a file's app is.

Every method is synchronous and may block on the network: a node calls them from a thread
(:mod:`kanal.app_stores.cache`), ``kanal apps`` directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from kanal.app_stores.database import Cursor, Database, StoreUnavailable
from kanal.app_stores.schema import migrate
from kanal.app_stores.url import parse_store_url
from kanal.config import App
from kanal.settings.loaders import ConfigError, app_from_table
from kanal.settings.render import app_table

__all__ = ["AppConflict", "AppNotFound", "SqlAppStore", "StoreUnavailable"]

log = logging.getLogger("kanal.apps")

_COLUMNS = "app_id, app_key, settings"


class AppNotFound(LookupError):
    """No app has this id."""


class AppConflict(ValueError):
    """Another app already has this id or key (both are unique)."""


class SqlAppStore:
    """The apps of one database. ``wall`` gives the ``created_at``/``updated_at`` times."""

    def __init__(self, database: Database, wall: Callable[[], float] = time.time) -> None:
        self.database = database
        self._wall = wall
        self._migrated = False

    @classmethod
    def from_url(cls, url: str) -> SqlAppStore:
        """A store for ``[apps_store] url``; nothing is connected yet.

        Raises:
            ValueError: not a store URL (:func:`kanal.app_stores.url.parse_store_url`).
        """
        return cls(Database(parse_store_url(url)))

    def migrate(self) -> None:
        """Create or upgrade the schema, once per store object (every method calls it).

        Raises:
            StoreUnavailable: the database cannot be reached, or is too new.
        """
        if not self._migrated:
            migrate(self.database)
            self._migrated = True

    def revision(self) -> int:
        """A number that every write raises: the apps changed when it did."""
        self.migrate()
        with self.database.transaction() as cursor:
            return _revision(cursor)

    def load(self) -> tuple[int, tuple[App, ...]]:
        """The revision and every app, read in one transaction. A row that no longer loads
        (edited by hand into an invalid table) is left out with a logged error."""
        self.migrate()
        with self.database.transaction() as cursor:
            revision = _revision(cursor)
            cursor.execute(f"SELECT {_COLUMNS} FROM kanal_apps ORDER BY app_id")  # noqa: S608
            rows = cursor.fetchall()
        apps = []
        for row in rows:
            try:
                apps.append(_app(row))
            except (ConfigError, ValueError) as exc:
                log.error("apps store: app %s is left out: %s", row[0], exc)
        return revision, tuple(apps)

    def get(self, app_id: str) -> App:
        """The app with this id.

        Raises:
            AppNotFound: there is none.
        """
        self.migrate()
        with self.database.transaction() as cursor:
            cursor.execute(
                f"SELECT {_COLUMNS} FROM kanal_apps WHERE app_id = ?",  # noqa: S608
                (app_id,),
            )
            row = cursor.fetchone()
        if row is None:
            raise AppNotFound(app_id)
        return _app(row)

    def create(self, app: App) -> None:
        """Add ``app``.

        Raises:
            AppConflict: its id or key is taken.
        """
        self.migrate()
        now = self._wall()
        try:
            with self.database.transaction() as cursor:
                cursor.execute(
                    "INSERT INTO kanal_apps (app_id, app_key, settings, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (app.id, app.key, _settings(app), now, now),
                )
                _bump(cursor)
        except self.database.integrity_error:
            raise AppConflict(f"an app with id {app.id} or key {app.key} exists") from None

    def replace(self, app: App) -> None:
        """Store ``app`` over the app with the same id (every setting, key included).

        Raises:
            AppNotFound: there is no app with this id.
            AppConflict: another app has its key.
        """
        self.migrate()
        try:
            with self.database.transaction() as cursor:
                cursor.execute(
                    "UPDATE kanal_apps SET app_key = ?, settings = ?, updated_at = ?"
                    " WHERE app_id = ?",
                    (app.key, _settings(app), self._wall(), app.id),
                )
                if cursor.rowcount != 1:
                    raise AppNotFound(app.id)
                _bump(cursor)
        except self.database.integrity_error:
            raise AppConflict(f"another app has the key {app.key}") from None

    def delete(self, app_id: str) -> None:
        """Remove the app with this id.

        Raises:
            AppNotFound: there is none.
        """
        self.migrate()
        with self.database.transaction() as cursor:
            cursor.execute("DELETE FROM kanal_apps WHERE app_id = ?", (app_id,))
            if cursor.rowcount != 1:
                raise AppNotFound(app_id)
            _bump(cursor)

    def close(self) -> None:
        self.database.close()


def _revision(cursor: Cursor) -> int:
    cursor.execute("SELECT value FROM kanal_meta WHERE name = ?", ("revision",))
    return int(cursor.fetchone()[0])


def _bump(cursor: Cursor) -> None:
    cursor.execute("UPDATE kanal_meta SET value = value + 1 WHERE name = ?", ("revision",))


def _settings(app: App) -> str:
    table = app_table(app)
    del table["id"], table["key"]  # columns of their own
    return json.dumps(table, sort_keys=True)


def _app(row: tuple[str, str, str]) -> App:
    app_id, app_key, settings = row
    table = {**json.loads(settings), "id": app_id, "key": app_key}
    return app_from_table(table, f"apps store row {app_id}")
