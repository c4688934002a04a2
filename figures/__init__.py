"""fusionlens figures: pure functions from results to matplotlib figures; the paper style.

:func:`overlay` draws one map of per-image-token values over the original image."""

from figures.overlay import overlay

__all__ = ["overlay"]
