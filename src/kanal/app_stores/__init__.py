"""App stores (docs/apps.md): where the apps live when they are not the ``[[apps]]`` of the
TOML file, and how a node reads them without a database on its hot path.

* :mod:`~kanal.app_stores.url`: the ``[apps_store] url`` forms (sqlite, postgresql, mysql).
* :mod:`~kanal.app_stores.database`: one DB-API connection per dialect (the stdlib sqlite3,
  psycopg 3, PyMySQL), the driver imported only when its URL is used.
* :mod:`~kanal.app_stores.schema`: the schema, as numbered SQL files in ``migrations/`` that
  every dialect runs; kanal creates and migrates it on first contact.
* :mod:`~kanal.app_stores.sql`: :class:`~kanal.app_stores.sql.SqlAppStore`, the apps in one
  table, each row's settings stored as its ``[[apps]]`` table (so the settings table in
  :mod:`kanal.settings.table` drives the rows as it drives the file). Synchronous: the CLI
  calls it directly, a node from a thread.
* :mod:`~kanal.app_stores.cache`: :class:`~kanal.app_stores.cache.CachedAppStore`, the
  :class:`kanal.apps.AppStore` a node serves from: every app in memory, refreshed in the
  background every ``ttl`` seconds, which closes the connections of apps that were disabled
  or deleted (4003) and keeps serving the last snapshot while the database is down.
* :mod:`~kanal.app_stores.commands`: ``kanal apps ...``.

The TOML store, :class:`kanal.apps.StaticAppStore`, stays in :mod:`kanal.apps`, with the
:class:`~kanal.apps.AppStore` protocol that every transport reads apps through. Dependencies
point one way: ``url`` < ``database`` < ``schema`` < ``sql`` < ``cache``, ``commands``; nothing
here imports ``kanal.transport`` or ``kanal.server``, which wires the cache in.
"""

__all__: list[str] = []
