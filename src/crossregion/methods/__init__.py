"""Training methods, one file each, registered by name in ``METHODS``."""

from crossregion.methods import (  # noqa: F401  (importing a method registers it)
    adaptsegnet,
    advent,
    cra,
    entropy_min,
    fada,
    iast,
    proda,
    proda_distill,
    proda_warmup,
    pseudo_label_only,
    self_distill,
    source_only,
)
from crossregion.methods.base import BATCH_KINDS, METHODS, UNAUGMENTED_TARGET, Method, frozen

__all__ = ["BATCH_KINDS", "METHODS", "UNAUGMENTED_TARGET", "Method", "frozen"]
