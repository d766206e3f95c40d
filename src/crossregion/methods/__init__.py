"""Training methods, one file each, registered by name in ``METHODS``."""

from crossregion.methods import source_only  # noqa: F401  (registers "source_only")
from crossregion.methods import adaptsegnet, advent, fada  # noqa: F401  (register themselves)
from crossregion.methods import cra, entropy_min, pseudo_label_only, self_distill  # noqa: F401  (register themselves)
from crossregion.methods.base import BATCH_KINDS, METHODS, Method, frozen

__all__ = ["BATCH_KINDS", "METHODS", "Method", "frozen"]
