"""kanal's settings: the one table, loading it from TOML, environment and flags, writing it out.

* :mod:`~kanal.settings.table`: every setting declared once (:data:`SETTINGS`), with its kind,
  default, check, environment variable and flag.
* :mod:`~kanal.settings.loaders`: :func:`load_config` (defaults < TOML file < environment <
  flags), :func:`resolve_config` (what an embedding or publishing process passes) and
  :class:`ConfigError`.
* :mod:`~kanal.settings.render`: the effective config as TOML (``kanal check-config``) and the
  Markdown reference in ``docs/configuration.md``.

``loaders`` and ``render`` import ``table``; ``table`` imports neither, and neither imports the
other. Run ``python -m kanal.settings`` to print the Markdown settings reference.
"""

from kanal.settings.loaders import (
    ConfigError,
    is_default_credentials,
    load_config,
    resolve_config,
)
from kanal.settings.table import DEV_APP, DOCS_END, DOCS_START, SETTINGS

__all__ = [
    "DEV_APP",
    "DOCS_END",
    "DOCS_START",
    "SETTINGS",
    "ConfigError",
    "is_default_credentials",
    "load_config",
    "resolve_config",
]
