"""``python -m kanal``: the same entry point as the ``kanal`` console script."""

from kanal.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
