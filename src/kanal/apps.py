"""AppStore: finds the application a request or connection belongs to.

Ownership rule: the set of apps is configuration; this module only indexes it by key
(WebSocket, protocol.md §1.1) and by id (HTTP API, http-api.md §1). A reload
(:mod:`kanal.reload`) hands the store the apps of the re-read file with
:meth:`StaticAppStore.replace`; every lookup after it sees the new set, and connections keep
the :class:`~kanal.config.App` they were admitted with.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from kanal.config import App

__all__ = ["AppStore", "StaticAppStore"]


class AppStore(Protocol):
    def by_key(self, key: str) -> App | None: ...

    def by_id(self, app_id: str) -> App | None: ...

    def all(self) -> tuple[App, ...]: ...


class StaticAppStore:
    """Apps from the configuration file; several apps are fully isolated by id."""

    def __init__(self, apps: Iterable[App]) -> None:
        self._index = _Index(tuple(apps))

    def by_key(self, key: str) -> App | None:
        return self._index.by_key.get(key)

    def by_id(self, app_id: str) -> App | None:
        return self._index.by_id.get(app_id)

    def all(self) -> tuple[App, ...]:
        return self._index.apps

    def replace(self, apps: Iterable[App]) -> None:
        """Serve ``apps`` from now on; the three views change together, in one assignment."""
        self._index = _Index(tuple(apps))


class _Index:
    """One set of apps and its two lookups, never changed once built."""

    __slots__ = ("apps", "by_id", "by_key")

    def __init__(self, apps: tuple[App, ...]) -> None:
        self.apps = apps
        self.by_key = {app.key: app for app in apps}
        self.by_id = {app.id: app for app in apps}
