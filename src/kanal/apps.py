"""AppStore: finds the application a request or connection belongs to.

Ownership rule: the set of apps is configuration, loaded once; this module only indexes it
by key (WebSocket, protocol.md §1.1) and by id (HTTP API, http-api.md §1).
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
        self._apps = tuple(apps)
        self._by_key = {app.key: app for app in self._apps}
        self._by_id = {app.id: app for app in self._apps}

    def by_key(self, key: str) -> App | None:
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> App | None:
        return self._by_id.get(app_id)

    def all(self) -> tuple[App, ...]:
        return self._apps
