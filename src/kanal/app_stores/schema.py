"""The app store's schema: numbered SQL files in ``migrations/``, applied in order, once.

Ownership rule: the schema's shape is the files in ``migrations/`` (never edited once
released: a change is a new file with the next number); which of them a database has run is
the ``schema_version`` row of ``kanal_meta``, which this module alone writes. ``kanal_meta``
also holds ``revision``, which every write to the apps raises by one (:mod:`.sql`), so that a
node notices a change by reading one row (:mod:`.cache`).

kanal migrates on first contact (``kanal serve`` and every ``kanal apps`` command), so an
upgrade needs no separate step. A database whose schema is newer than this kanal knows is
refused rather than guessed at.
"""

from __future__ import annotations

import re
from importlib import resources

from kanal.app_stores.database import Cursor, Database, StoreUnavailable

__all__ = ["SCHEMA_VERSION", "migrate", "migrations"]

_META = """CREATE TABLE IF NOT EXISTS kanal_meta (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
)"""


def migrations() -> list[tuple[int, str]]:
    """Every migration shipped in the package: (version, SQL), lowest version first."""
    found = []
    for entry in resources.files("kanal.app_stores").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((int(match[1]), entry.read_text(encoding="utf-8")))
    return sorted(found)


SCHEMA_VERSION = migrations()[-1][0]


def migrate(database: Database) -> int:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`; the version it had before.

    Raises:
        StoreUnavailable: the database cannot be reached, or its schema is newer than this
            kanal (written by a later release).
    """
    with database.transaction(create=True) as cursor:
        cursor.execute(_META)
        before = _ensure_row(cursor, "schema_version")
        _ensure_row(cursor, "revision")
    if before > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"schema version {before} is newer than this kanal's ({SCHEMA_VERSION}): upgrade kanal"
        )
    for version, sql in migrations():
        if version > before:
            _apply(database, version, sql)
    return before


def _apply(database: Database, version: int, sql: str) -> None:
    # One transaction per file: SQLite and PostgreSQL roll a failed one back whole. MySQL
    # commits each CREATE at once, which is why the version row is checked again first.
    with database.transaction() as cursor:
        cursor.execute("SELECT value FROM kanal_meta WHERE name = ?", ("schema_version",))
        if cursor.fetchone()[0] >= version:
            return  # another process got there first
        for statement in _statements(sql):
            cursor.execute(statement)
        cursor.execute(
            "UPDATE kanal_meta SET value = ? WHERE name = ?", (version, "schema_version")
        )


def _ensure_row(cursor: Cursor, name: str) -> int:
    cursor.execute("SELECT value FROM kanal_meta WHERE name = ?", (name,))
    row = cursor.fetchone()
    if row is not None:
        return int(row[0])
    cursor.execute("INSERT INTO kanal_meta (name, value) VALUES (?, 0)", (name,))
    return 0


def _statements(sql: str) -> list[str]:
    """The statements of a migration file: comments dropped, split at each ``;``."""
    text = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in text.split(";") if statement.strip()]
