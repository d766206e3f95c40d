"""Table-3 baseline "pseudo labels only": retrain on the trusted pseudo labels, nothing else.

CRA without its adversarial part (paper Table 3): the same target data, rare-class scaling,
trusted mask and self-training loss (``methods/self_training.py``), no discriminator.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossregion.methods.base import register_method
from crossregion.methods.self_training import RegionConfig, RegionMethod


@dataclass(frozen=True)
class PseudoLabelOnlyConfig(RegionConfig):
    """Self-training on trusted pixels; the fields are CRA's region fields."""

    name: str = "pseudo_label_only"


@register_method
class PseudoLabelOnly(RegionMethod):
    """One phase: forward the target batch, CE on its trusted pixels, one SGD step (``RegionMethod``'s
    step with no untrusted-region term)."""

    config_class = PseudoLabelOnlyConfig
