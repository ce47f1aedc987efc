"""Reloading the configuration without a restart: SIGHUP, and ``kanal reload`` which sends it.

Ownership rule: what a reload changes, and in what order, lives here; the app store swaps its
apps (:meth:`kanal.apps.StaticAppStore.replace`) and the hub closes connections
(:meth:`kanal.hub.Hub.close_app`). The decision which apps were added, changed, removed or
disabled is the pure :func:`app_changes`.

What reloads (docs/apps.md, "Reload"): the ``[[apps]]`` — credentials (a secret rotation
included), switches, limits and webhook endpoints. New connections and HTTP API requests see
the new apps at once, and open connections from their next frame on
(:meth:`kanal.hub.Hub.reconfigure_app`). The connections of a removed or disabled
app are closed with 4003 (protocol.md §6: 4000-4099, do not reconnect as is). The
``[server]``, ``[webhooks]`` and ``[scaling]`` settings need a restart: a changed one is named in
a WARNING and keeps its running value. A file that does not load is refused as a whole, with
an ERROR naming the key, and the running configuration stays.

With ``kanal serve --workers N`` the parent forwards SIGHUP to every worker
(:mod:`kanal.workers`), and each one reloads for itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kanal.apps import StaticAppStore
from kanal.config import App, Config
from kanal.protocol.errors import CloseCode
from kanal.settings import ConfigError

if TYPE_CHECKING:
    from kanal.server import Server

__all__ = ["AppChanges", "Reloader", "app_changes", "fixed_changes", "reload_on_sighup"]

log = logging.getLogger("kanal")

#: The sections a reload cannot apply: listeners, processes, the adapter and the webhook
#: pipeline are built once, at start-up.
FIXED_SECTIONS = ("server", "webhooks", "scaling", "apps_store")


@dataclass(frozen=True, slots=True)
class AppChanges:
    """App ids by what a reload does to them; each id is in at most one group."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()  # enabled before, disabled now

    @property
    def closed(self) -> tuple[str, ...]:
        """The apps whose open connections are closed with 4003."""
        return self.removed + self.disabled


def app_changes(running: Sequence[App], loaded: Sequence[App]) -> AppChanges:
    """Compare the running apps with the reloaded ones, by app id.

    An app that is disabled in both is merely ``changed`` (if at all): it has no connections.
    """
    before = {app.id: app for app in running}
    after = {app.id: app for app in loaded}
    changed = [i for i in after if i in before and after[i] != before[i]]
    disabled = [i for i in changed if before[i].enabled and not after[i].enabled]
    return AppChanges(
        added=tuple(i for i in after if i not in before),
        changed=tuple(i for i in changed if i not in disabled),
        removed=tuple(i for i in before if i not in after),
        disabled=tuple(disabled),
    )


def fixed_changes(running: Config, loaded: Config) -> list[str]:
    """The dotted keys (``server.port``) of settings that differ but cannot change live."""
    keys = []
    for section in FIXED_SECTIONS:
        old, new = getattr(running, section), getattr(loaded, section)
        for field in dataclasses.fields(old):
            if getattr(old, field.name) != getattr(new, field.name):
                keys.append(f"{section}.{field.name}")
    return keys


class Reloader:
    """Re-reads the configuration of a running node and applies what can change live.

    Args:
        server: the running node (its ``config`` is updated in place).
        load: reads the configuration again, as at start-up (the same file, environment and
            flags); raises :class:`~kanal.settings.ConfigError` when it is invalid.
    """

    def __init__(self, server: Server, load: Callable[[], Config]) -> None:
        self.server = server
        self._load = load

    def reload(self) -> bool:
        """Reload once; whether the new apps are in force. Never raises."""
        try:
            loaded = self._load()
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return False
        except Exception:
            log.exception("reload failed, the running configuration stays")
            return False
        self.apply(loaded)
        return True

    def apply(self, loaded: Config) -> AppChanges:
        """Put ``loaded``'s apps in force; close the connections of removed and disabled apps."""
        running = self.server.config
        for key in fixed_changes(running, loaded):
            log.warning("reload: %s changed, which needs a restart: the running value stays", key)
        apps = self.server.apps
        if not isinstance(apps, StaticAppStore):
            # A SQL store's apps are read from the database every ttl, never from the file.
            log.info("reload: the apps come from [apps_store], not the file: nothing to reload")
            return AppChanges()
        changes = app_changes(running.apps, loaded.apps)
        apps.replace(loaded.apps)
        self.server.config = dataclasses.replace(running, apps=loaded.apps)
        hub = self.server.hub
        for app_id in changes.added:
            _ = hub.metrics.apps[app_id]  # its series exist from now on, at 0
        by_id = {app.id: app for app in loaded.apps}
        updated = sum(hub.reconfigure_app(by_id[app_id]) for app_id in changes.changed)
        closed = sum(self._close(app_id, changes) for app_id in changes.closed)
        log.info(
            "reload: configuration reloaded: %d apps (added %s, changed %s, removed %s, "
            "disabled %s; %d connections updated, %d closed with 4003)",
            len(loaded.apps),
            _ids(changes.added),
            _ids(changes.changed),
            _ids(changes.removed),
            _ids(changes.disabled),
            updated,
            closed,
        )
        return changes

    def _close(self, app_id: str, changes: AppChanges) -> int:
        reason = "Application disabled" if app_id in changes.disabled else "Application removed"
        return self.server.hub.close_app(app_id, CloseCode.APP_DISABLED, reason)


def _ids(ids: tuple[str, ...]) -> str:
    return ",".join(ids) or "-"


def reload_on_sighup(reloader: Reloader) -> None:
    """Reload on every SIGHUP, in the event loop (between two events, never inside one)."""

    def received() -> None:
        log.info("reload: SIGHUP received, reading the configuration again")
        reloader.reload()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, received)
