"""kanal's settings: the one table, loading it from TOML, environment and flags, writing it out.

* :mod:`~kanal.settings.table`: every setting declared once (:data:`SETTINGS`), and loading
  (:func:`load_config`, :class:`ConfigError`).
* :mod:`~kanal.settings.render`: the effective config as TOML (``kanal check-config``) and the
  Markdown reference in ``docs/configuration.md``.

``render`` imports ``table``, never the reverse. Run ``python -m kanal.settings`` to print the
Markdown settings reference.
"""

from kanal.settings.table import (
    DEV_APP,
    DOCS_END,
    DOCS_START,
    SETTINGS,
    ConfigError,
    is_default_credentials,
    load_config,
)

__all__ = [
    "DEV_APP",
    "DOCS_END",
    "DOCS_START",
    "SETTINGS",
    "ConfigError",
    "is_default_credentials",
    "load_config",
]
