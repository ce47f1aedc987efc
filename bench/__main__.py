"""``python -m bench run [--scenarios ...] [--runs 3] [--soketi-dir ...]``."""

from bench.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
