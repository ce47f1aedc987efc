"""Implementations of the horizontal-scaling seam (see ``base``)."""

__all__: list[str] = []
