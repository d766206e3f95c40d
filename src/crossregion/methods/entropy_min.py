"""Table-3 baseline "entropy minimisation": pseudo-label training on trusted pixels plus
entropy minimisation on untrusted ones.

The untrusted region is sharpened directly (as ADVENT's MinEnt does for all target pixels)
instead of being aligned with the trusted region by a discriminator as CRA does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crossregion.methods.base import check_non_negative, register_method
from crossregion.methods.self_training import RegionConfig, RegionMethod


@dataclass(frozen=True)
class EntropyMinConfig(RegionConfig):
    """CRA's region fields plus the weight of the entropy term."""

    name: str = "entropy_min"
    # Weight of the untrusted-region entropy loss; 0.001 as ADVENT's MinEnt λ_ent and CRA's
    # adversarial weight (the paper does not give the baseline's value).
    entropy_weight: float = 0.001

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "entropy_weight")


def masked_entropy_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy H / ln K of softmax(logits), summed over ``mask`` and divided by all N·H·W pixels.

    The normalisation by all pixels matches CRA's adversarial loss on the same region, so the
    two losses weigh the untrusted region alike.

    Shape:
        - logits: (N, K, H, W)
        - mask: (N, H, W) bool
        - output: scalar (float32 under autocast, which runs softmax in float32)
    """
    # From log_softmax, not from probabilities: p log p has an infinite gradient where a
    # probability underflows to 0, log_softmax stays finite.
    log_probs = F.log_softmax(logits, dim=1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=1) / math.log(logits.shape[1])
    return (entropy * mask).sum() / mask.numel()


@register_method
class EntropyMin(RegionMethod):
    """One phase: CE on trusted pixels plus weighted entropy on untrusted pixels, one SGD step."""

    config_class = EntropyMinConfig

    def untrusted_terms(self, logits: torch.Tensor, untrusted: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss/ent_untrusted": masked_entropy_loss(logits, untrusted)}

    def weighted_region_loss(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.cfg.entropy_weight * terms["loss/ent_untrusted"]
