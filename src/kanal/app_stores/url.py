"""``[apps_store] url``: which database holds the apps, and how to reach it.

Ownership rule: the URL forms kanal accepts are decided here only (the settings table checks a
URL with :func:`store_url_error`, the stores connect with :func:`parse_store_url`).

* ``sqlite:///var/lib/kanal/apps.db``: the file ``/var/lib/kanal/apps.db``. Everything after
  ``sqlite://`` is the path, so three slashes give an absolute path and ``sqlite://apps.db`` a
  relative one (SQLAlchemy would read three slashes as relative: kanal follows the example of
  docs/apps.md instead).
* ``postgresql://user:password@host:5432/dbname?sslmode=require`` (or ``postgres://``): a
  libpq connection URI, handed to psycopg unchanged.
* ``mysql://user:password@host:3306/dbname`` (or ``mariadb://``): MySQL or MariaDB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["SCHEMES", "Dialect", "StoreUrl", "parse_store_url", "store_url_error"]

Dialect = Literal["sqlite", "postgresql", "mysql"]

#: URL scheme -> the dialect it selects.
SCHEMES: dict[str, Dialect] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A parsed store URL: the dialect and what its driver connects with."""

    dialect: Dialect
    url: str = field(repr=False)  # as given, password included: for psycopg
    path: str = ""  # sqlite: the database file
    host: str = ""
    port: int = 0
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""
    options: tuple[tuple[str, str], ...] = ()  # the query string, for the driver


def parse_store_url(url: str) -> StoreUrl:
    """Split ``url`` into what a driver needs.

    Raises:
        ValueError: not a URL kanal can store apps in (the message says why).
    """
    problem = store_url_error(url)
    if problem is not None or not url:
        raise ValueError(problem or "no store URL")
    parts = urlsplit(url)
    dialect = SCHEMES[parts.scheme]
    if dialect == "sqlite":
        return StoreUrl("sqlite", url, path=unquote(url[len("sqlite://") :]))
    return StoreUrl(
        dialect,
        url,
        host=parts.hostname or "localhost",
        port=parts.port or (5432 if dialect == "postgresql" else 3306),
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
        options=tuple(parse_qsl(parts.query)),
    )


def store_url_error(url: str) -> str | None:
    """Why ``url`` cannot name an app store, or None (empty means the TOML file's apps)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in SCHEMES:
        return "must be empty or a sqlite://, postgresql:// or mysql:// URL"
    if parts.scheme == "sqlite" and not url[len("sqlite://") :]:
        return "needs a file path, e.g. sqlite:///var/lib/kanal/apps.db"
    if parts.scheme != "sqlite" and not parts.path.lstrip("/"):
        return "needs a database name, e.g. postgresql://kanal@db.internal/kanal"
    return None
