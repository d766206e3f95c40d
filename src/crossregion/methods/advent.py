"""ADVENT: AdvEnt (adversarial entropy maps) and MinEnt (entropy minimisation) (docs/spec.md §4.3).

*ADVENT: Adversarial Entropy Minimization for Domain Adaptation in Semantic Segmentation*,
Vu et al., CVPR 2019, arXiv:1811.12833. One method with ``variant: advent | minent``; AdvEnt
is AdaptSegNet's step (``methods/adaptsegnet.py``) with weighted self-information maps as the
discriminators' input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossregion.engine.trainer import StepContext
from crossregion.methods.adaptsegnet import OutputSpaceAdaptation, OutputSpaceConfig
from crossregion.methods.base import check_choice, check_non_negative, register_method
from crossregion.methods.losses import resize_aligned

VARIANTS = ("advent", "minent")


# ADVENT's epsilon inside the log: keeps log(0) and its gradient finite for saturated softmax
# outputs (xlogy would give a NaN gradient at p = 0). Representable in float32 and bf16.
LOG_EPSILON = 1e-30


def weighted_self_information(probs: torch.Tensor) -> torch.Tensor:
    """ADVENT's map I = -p · log2(p + 1e-30) / log2(K), per class channel.

    Its class mean is CRA's normalised entropy e (``trust.normalized_entropy``) up to the
    epsilon, which is there so the map can be trained through: its gradient stays finite where
    a probability underflows to 0.

    Shape:
        - probs: (N, K, H, W) softmax probabilities
        - output: (N, K, H, W)
    """
    num_classes = probs.shape[1]
    return -probs * torch.log(probs + LOG_EPSILON) / math.log(num_classes)


def entropy_loss(probs: torch.Tensor) -> torch.Tensor:
    """MinEnt's loss: Σ_k -p log2 p / log2 K summed over classes, mean over all N·H·W pixels.

    Equals K times the mean of CRA's normalised entropy e = H / (K ln K).

    Shape:
        - probs: (N, K, H, W) softmax probabilities
        - output: scalar
    """
    return weighted_self_information(probs).sum(dim=1).mean()


@dataclass(frozen=True)
class AdventConfig(OutputSpaceConfig):
    """ADVENT weights (docs/spec.md §4.3). Single-level training is ``model.multi_level: false``;
    the discriminator fields are used by AdvEnt only (MinEnt has none)."""

    name: str = "advent"
    # "advent": discriminators on weighted self-information maps; "minent": entropy loss, no D.
    variant: str = "advent"
    # Weight of the target loss of the main and auxiliary heads: the adversarial loss (AdvEnt)
    # or the entropy loss (MinEnt); both are 0.001 / 0.0002 in ADVENT.
    target_main_weight: float = 0.001
    target_aux_weight: float = 0.0002

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "variant", VARIANTS)
        check_non_negative(self, "target_main_weight", "target_aux_weight")


@register_method
class Advent(OutputSpaceAdaptation):
    """AdvEnt or MinEnt, chosen by ``variant``.

    AdvEnt runs ``OutputSpaceAdaptation``'s three phases with I maps. MinEnt has one phase
    after the source CE: the target forward, the weighted entropy loss of each head, backward,
    one SGD step; it has no discriminator.
    """

    config_class = AdventConfig

    def discriminator_input(self, probs: torch.Tensor) -> torch.Tensor:
        return weighted_self_information(probs)

    def adversarial_weights(self) -> dict[str, float]:
        return {"main": self.cfg.target_main_weight, "aux": self.cfg.target_aux_weight}

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        if self.cfg.variant == "minent":
            return {"segmenter": segmenter}
        return super().build_models(segmenter)

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        if self.cfg.variant == "advent":
            return super().training_step(models, batches, ctx)
        segmenter = models["segmenter"]
        source, target = batches["source"], batches["target"]
        # (1) Segmentation on source.
        _, losses = self.segment_source(segmenter, source, ctx)

        # (2) Minimise the entropy of target predictions at the image size.
        outputs_tgt = segmenter(target["image"])
        size_tgt = tuple(target["image"].shape[-2:])
        probs_tgt = F.softmax(resize_aligned(outputs_tgt["logits"], size_tgt), dim=1)
        losses["loss/ent_tgt"] = entropy_loss(probs_tgt)
        loss_tgt = self.cfg.target_main_weight * losses["loss/ent_tgt"]
        if "aux_logits" in outputs_tgt:
            probs_aux = F.softmax(resize_aligned(outputs_tgt["aux_logits"], size_tgt), dim=1)
            losses["loss/ent_tgt_aux"] = entropy_loss(probs_aux)
            loss_tgt = loss_tgt + self.cfg.target_aux_weight * losses["loss/ent_tgt_aux"]
        ctx.backward(loss_tgt)
        ctx.step("segmenter")
        return {key: value.detach() for key, value in losses.items()}
