"""CachedAppStore: a SQL store's apps in memory, so that no lookup waits for the database.

Ownership rule: a node's view of a SQL store's apps is this object's snapshot, replaced whole
by :meth:`CachedAppStore.refresh` and read by everyone else through the
:class:`kanal.apps.AppStore` methods, which are dictionary lookups.

Every ``ttl`` seconds a background task reads one row (``revision``, raised by every write) and
reloads the apps only when it changed; an app that a reload finds disabled or deleted has its
open connections closed (4003, through ``on_gone``), and new connections and API calls see the
new snapshot at once. Why a whole snapshot rather than a per-key cache: docs/design.md, "App
stores". While the database is down the last snapshot keeps serving, unknown keys and ids are
refused with a logged error, :meth:`status` reports it for ``/ready``, and the next refresh
that succeeds recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from kanal import logs
from kanal.app_stores.sql import SqlAppStore, StoreUnavailable
from kanal.config import App

__all__ = ["CachedAppStore"]

log = logging.getLogger("kanal.apps")

#: Why a refresh closes an app's connections, as the close reason (4003).
GONE = {"disabled": "Application disabled", "deleted": "Application deleted"}
#: Seconds a refresh waits for the database before it counts as down.
REFRESH_TIMEOUT = 10.0

Loaded = tuple[int, tuple[App, ...]]  # a revision and the apps as of it


class CachedAppStore:
    """Implements :class:`kanal.apps.AppStore` over a :class:`SqlAppStore`.

    ``on_gone(app, why)`` is called for every app a refresh finds disabled or deleted (``why``
    is a key of :data:`GONE`); the composition root closes its connections there.
    ``on_changed(app)`` for every other app a refresh finds changed (a rotated secret, a new
    limit): the composition root hands it to the open connections, as a reload does.

    Raises:
        DriverMissing: the store's URL needs a driver that is not installed.
    """

    def __init__(
        self,
        store: SqlAppStore,
        *,
        ttl: float,
        on_gone: Callable[[App, str], None] = lambda app, why: None,
        on_changed: Callable[[App], None] = lambda app: None,
        timeout: float = REFRESH_TIMEOUT,
    ) -> None:
        self.store = store
        # What a refresh survives; imports the driver now, so that a missing one stops the
        # node at start-up (DriverMissing) instead of at its first refresh.
        self._failures = (StoreUnavailable, store.database.integrity_error)
        self.ttl = ttl
        self.timeout = timeout
        self.on_gone = on_gone
        self.on_changed = on_changed
        self._apps: tuple[App, ...] = ()
        self._by_key: dict[str, App] = {}
        self._by_id: dict[str, App] = {}
        self._revision: int | None = None  # None: nothing loaded yet
        self._error: str | None = "not loaded yet"
        self._outage_logged = False  # one error line per outage, one info line at its end
        self._task: asyncio.Task[None] | None = None
        # The database read in its thread; a read that outlives its refresh is awaited by
        # the next one rather than joined by a second thread waiting for the same database.
        self._reading: asyncio.Future[Loaded | None] | None = None

    def by_key(self, key: str) -> App | None:
        app = self._by_key.get(key)
        if app is None and self._error is not None:
            self._refused("key", key)
        return app

    def by_id(self, app_id: str) -> App | None:
        app = self._by_id.get(app_id)
        if app is None and self._error is not None:
            self._refused("id", app_id)
        return app

    def all(self) -> tuple[App, ...]:
        return self._apps

    def status(self) -> tuple[bool, str]:
        """For ``/ready``: not ready while the last refresh failed (or none succeeded yet)."""
        if self._error is None:
            return True, "ok"
        return False, f"apps store unavailable: {self._error}"

    async def start(self) -> None:
        """Load the apps (a database that is down is logged, not fatal), then refresh every
        ``ttl`` seconds until :meth:`close`."""
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._refresh_every_ttl())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._reading is None or self._reading.done():
            await asyncio.to_thread(self.store.close)
        # else a read still waits for the database: it holds the connection until the
        # driver's own timeouts end it, and closing would wait for that too.

    async def refresh(self) -> bool:
        """Reload the apps if they changed; False (and the old snapshot kept) when the
        database fails or does not answer within ``timeout`` seconds."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(asyncio.to_thread(self._read, self._revision))
            self._reading.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(self.timeout):
                loaded = await asyncio.shield(self._reading)
        except TimeoutError:
            return self._failed(f"no answer within {self.timeout:g} s")
        except self._failures as exc:
            return self._failed(str(exc))
        if loaded is not None:
            self._replace(*loaded)
        if self._error is not None:
            log.info("apps store: %d apps loaded (revision %s)", len(self._apps), self._revision)
        self._error, self._outage_logged = None, False
        return True

    def _read(self, known: int | None) -> Loaded | None:
        """In a thread: the apps if the revision moved from ``known``, else None."""
        if self.store.revision() == known:
            return None
        return self.store.load()

    def _failed(self, error: str) -> bool:
        if not self._outage_logged:
            self._outage_logged = True
            log.error(
                "apps store unavailable: %s; serving the %d apps cached, refusing others",
                error,
                len(self._apps),
            )
        self._error = error
        return False

    async def _refresh_every_ttl(self) -> None:
        while True:
            await asyncio.sleep(self.ttl)
            await self.refresh()

    def _replace(self, revision: int, apps: tuple[App, ...]) -> None:
        before = self._by_id
        self._apps = apps
        self._by_id = {app.id: app for app in apps}
        self._by_key = {app.key: app for app in apps}
        self._revision = revision
        for app_id, old in before.items():
            new = self._by_id.get(app_id)
            if new is None:
                self.on_gone(old, "deleted")
            elif old.enabled and not new.enabled:
                self.on_gone(new, "disabled")
            elif new != old:
                self.on_changed(new)

    def _refused(self, what: str, value: str) -> None:
        # A lookup that misses while the store is down may be an app created since the last
        # refresh: say so, rate-limited like every refusal (a client's input is cut short).
        logs.refused(
            log,
            "apps store down",
            "unknown app %s %s refused while the apps store is unavailable: %s",
            what,
            logs.reason(value),
            self._error,
            level=logging.ERROR,
        )


def _retrieve(reading: asyncio.Future[Loaded | None]) -> None:
    """Mark a read's failure as seen: the refresh that waited for it may have timed out."""
    if not reading.cancelled():
        reading.exception()
