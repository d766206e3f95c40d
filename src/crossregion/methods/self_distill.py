"""Self-distillation (docs/spec.md §1.9): retrain a fresh model on the CRA model's hard pseudo labels.

The optional last stage of the pipeline. Its store comes from `crossregion pseudo-label` run
with the CRA checkpoint; every pixel's argmax is a label (no entropy mask, no temperature, no
discriminator). The model is re-initialised as the official code does: set ``model.pretrained``
to ImageNet weights (or null for from scratch) and leave ``model.init_checkpoint`` unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossregion.methods.base import register_method
from crossregion.methods.losses import segmentation_cross_entropy
from crossregion.methods.self_training import PseudoLabelConfig, PseudoLabelMethod


@dataclass(frozen=True)
class SelfDistillConfig(PseudoLabelConfig):
    """Only the store: the official stage has no constant of its own."""

    name: str = "self_distill"


@register_method
class SelfDistill(PseudoLabelMethod):
    """One phase: plain CE of the upsampled logits against the pseudo label (all pixels), one SGD step."""

    config_class = SelfDistillConfig

    def target_losses(
        self, segmenter: nn.Module, target: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = segmenter(target["image"])["logits"]
        # Pseudo label 255 only where a crop was padded.
        loss_seg = segmentation_cross_entropy(logits, target["pseudo_mask"])
        return loss_seg, {"loss/seg_pseudo": loss_seg}
