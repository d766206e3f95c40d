"""Training methods, one file each, registered by name in ``METHODS``."""

from crossregion.methods import source_only  # noqa: F401  (registers "source_only")
from crossregion.methods.base import BATCH_KINDS, METHODS, Method, frozen

__all__ = ["BATCH_KINDS", "METHODS", "Method", "frozen"]
