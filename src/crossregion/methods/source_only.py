"""Source-only training: supervised cross-entropy on labelled source images (docs/spec.md §2.4).

The stage-0 model of the pipeline. With ``data.source`` set to the labelled target train split
(``cityscapes``, ``split: train``, ``labelled: true``) the same method trains the target oracle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossregion.config.schema import MethodConfig
from crossregion.engine.trainer import StepContext
from crossregion.methods.base import Method, check_non_negative, register_method
from crossregion.methods.losses import segmentation_cross_entropy


@dataclass(frozen=True)
class SourceOnlyConfig(MethodConfig):
    """Source-only CE. No temperature (FADA train_src.py uses plain CE)."""

    name: str = "source_only"
    # Weight of the auxiliary (layer3) head's CE when model.multi_level is on: 0.1 as
    # AdaptSegNet/ADVENT (docs/spec.md §4.2); unused for single-level models.
    aux_loss_weight: float = 0.1

    def __post_init__(self) -> None:
        check_non_negative(self, "aux_loss_weight")


@register_method
class SourceOnly(Method):
    """Supervised segmentation on the source domain.

    One phase per iteration: forward the source batch, CE against its labels at label
    resolution (plus the weighted auxiliary CE for multi-level models), one SGD step.
    """

    config_class = SourceOnlyConfig
    required_batches = ("source",)

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        source = batches["source"]
        outputs = models["segmenter"](source["image"])
        loss_seg = segmentation_cross_entropy(outputs["logits"], source["mask"])
        losses = {"loss/seg_src": loss_seg}
        total = loss_seg
        if "aux_logits" in outputs:
            loss_aux = segmentation_cross_entropy(outputs["aux_logits"], source["mask"])
            losses["loss/seg_src_aux"] = loss_aux
            total = total + self.cfg.aux_loss_weight * loss_aux
        ctx.backward(total)
        ctx.step("segmenter")
        return {key: value.detach() for key, value in losses.items()}
