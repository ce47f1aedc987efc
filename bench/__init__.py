"""Side-by-side benchmark of kanal and soketi: ``python -m bench run`` (see docs/performance.md)."""
