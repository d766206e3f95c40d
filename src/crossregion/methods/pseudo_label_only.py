"""Table-3 baseline "pseudo labels only": retrain on the trusted pseudo labels, nothing else.

CRA without its adversarial part (paper Table 3): the same target data, rare-class scaling,
trusted mask and self-training loss (``methods/self_training.py``), no discriminator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossregion.methods.base import register_method
from crossregion.methods.losses import upsample_logits
from crossregion.methods.self_training import RegionConfig, RegionMethod, trusted_cross_entropy


@dataclass(frozen=True)
class PseudoLabelOnlyConfig(RegionConfig):
    """Self-training on trusted pixels; the fields are CRA's region fields."""

    name: str = "pseudo_label_only"


@register_method
class PseudoLabelOnly(RegionMethod):
    """One phase: forward the target batch, CE on its trusted pixels, one SGD step."""

    config_class = PseudoLabelOnlyConfig

    def target_losses(
        self, segmenter: nn.Module, target: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        trusted, _ = self.region_masks(target)
        logits = upsample_logits(segmenter(target["image"])["logits"], tuple(target["pseudo_mask"].shape[-2:]))
        loss_seg = trusted_cross_entropy(
            logits, target["pseudo_mask"], trusted, self.cfg.seg_temperature, self.cfg.trusted_ce_weighting
        )
        return loss_seg, {"loss/seg_trusted": loss_seg}
