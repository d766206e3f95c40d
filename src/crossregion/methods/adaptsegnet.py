"""AdaptSegNet: output-space adversarial adaptation (docs/spec.md §4.1, §4.2).

*Learning to Adapt Structured Output Space for Semantic Segmentation*, Tsai et al., CVPR 2018,
arXiv:1802.10349. ``OutputSpaceAdaptation`` holds the step shared with ADVENT's AdvEnt
(``methods/advent.py``), which only changes what the discriminators see, and with the
least-squares warm-ups of IAST and ProDA (``LeastSquaresAdaptation``, ``domain_mse``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossregion.config.schema import ExperimentConfig, MethodConfig
from crossregion.engine.trainer import StepContext
from crossregion.methods.base import Method, check_non_negative, check_positive, frozen, register_method
from crossregion.methods.losses import SOURCE_DOMAIN, TARGET_DOMAIN, resize_aligned, segmentation_cross_entropy
from crossregion.models import OutputSpaceDiscriminator

# Output levels of a multi-level segmenter: the main head on layer4, the auxiliary one on layer3.
LOGIT_KEYS = {"main": "logits", "aux": "aux_logits"}


def domain_bce(disc_logits: torch.Tensor, label: float) -> torch.Tensor:
    """BCE-with-logits of every discriminator output against one domain label, mean over the map.

    Shape:
        - disc_logits: (N, 1, h, w)
        - output: scalar, float32
    """
    disc_logits = disc_logits.float()
    return F.binary_cross_entropy_with_logits(disc_logits, torch.full_like(disc_logits, label))


def domain_mse(disc_outputs: torch.Tensor, label: float) -> torch.Tensor:
    """Least-squares GAN loss (IAST's and ProDA's warm-ups): mean of (D(x) − label)² over the map.

    Shape:
        - disc_outputs: (N, 1, h, w) raw discriminator outputs (no sigmoid)
        - output: scalar, float32
    """
    disc_outputs = disc_outputs.float()
    return F.mse_loss(disc_outputs, torch.full_like(disc_outputs, label))


@dataclass(frozen=True)
class OutputSpaceConfig(MethodConfig):
    """What every ``OutputSpaceAdaptation`` method has: the auxiliary head's source CE weight and
    its output-space discriminators (AdaptSegNet's; ADVENT and the warm-ups of IAST and ProDA
    build on them)."""

    # λ_seg: weight of the auxiliary head's source CE.
    seg_aux_weight: float = 0.1
    # Each discriminator's loss is this times the GAN loss on the source (label 0) plus this times
    # the GAN loss on the target (label 1).
    disc_domain_weight: float = 0.5
    # Width of the discriminators' first conv (official: 64).
    disc_width: int = 64

    def __post_init__(self) -> None:
        check_non_negative(self, "seg_aux_weight", "disc_domain_weight")
        check_positive(self, "disc_width")


@dataclass(frozen=True)
class AdaptSegNetConfig(OutputSpaceConfig):
    """AdaptSegNet weights (docs/spec.md §4.2; official multi-level defaults).

    The single-level variant is ``model.multi_level: false``: then only the main head and its
    discriminator train, with ``adv_main_weight`` (0.001, the paper's single-level value).
    """

    name: str = "adaptsegnet"
    # λ_adv of the main (layer4) and auxiliary (layer3) heads on the target.
    adv_main_weight: float = 0.001
    adv_aux_weight: float = 0.0002

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "adv_main_weight", "adv_aux_weight")


class OutputSpaceAdaptation(Method):
    """Adversarial training with one output-space discriminator per segmenter head.

    Per iteration (docs/spec.md §4.1): (1) CE on the source batch (main + ``seg_aux_weight`` × aux),
    backward; (2) target forward, each head's map (``discriminator_input``) goes through its
    frozen discriminator, which the segmenter tries to make say "source", backward, SGD step;
    (3) each discriminator learns source vs target on the detached maps of both batches, Adam
    step. Subclasses set ``discriminator_input`` and ``adversarial_weights``.
    """

    required_batches = ("source", "target")

    def discriminator_input(self, probs: torch.Tensor) -> torch.Tensor:
        """The map a discriminator sees, computed from softmax probabilities.

        Shape:
            - probs: (N, K, H, W)
            - output: (N, K, H, W)
        """
        raise NotImplementedError(f"{type(self).__name__} must implement discriminator_input")

    def adversarial_weights(self) -> dict[str, float]:
        """Weight of the adversarial target loss per level (``main``, ``aux``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement adversarial_weights")

    def domain_loss(self, disc_outputs: torch.Tensor, label: float) -> torch.Tensor:
        """The GAN loss of discriminator outputs against a domain label: BCE-with-logits here
        (AdaptSegNet, ADVENT); ``LeastSquaresAdaptation`` uses least squares.

        Shape:
            - disc_outputs: (N, 1, h, w)
            - output: scalar, float32
        """
        return domain_bce(disc_outputs, label)

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        """The segmenter plus ``discriminator_main`` (and ``discriminator_aux`` when multi-level)."""
        levels = ("main", "aux") if segmenter.multi_level else ("main",)
        discriminators = {f"discriminator_{level}": self.build_discriminator() for level in levels}
        return {"segmenter": segmenter, **discriminators}

    def build_discriminator(self) -> nn.Module:
        """One output-space discriminator: AdaptSegNet's (``disc_width`` base channels)."""
        return OutputSpaceDiscriminator(self.num_classes, ndf=self.cfg.disc_width)

    def _maps(
        self, outputs: Mapping[str, torch.Tensor], size: tuple[int, int], levels: list[str]
    ) -> dict[str, torch.Tensor]:
        """Each level's discriminator input at the image size (docs/spec.md §4.1 upsamples before D)."""
        return {
            level: self.discriminator_input(F.softmax(resize_aligned(outputs[LOGIT_KEYS[level]], size), dim=1))
            for level in levels
        }

    def segment_source(
        self, segmenter: nn.Module, source: Mapping[str, Any], ctx: StepContext
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Source forward, CE of the main head (+ ``seg_aux_weight`` × aux head), backward.

        Backward runs here so the source graph is freed before the target forward.

        Returns:
            The segmenter's outputs (graph already consumed) and the CE losses by key.
        """
        outputs = segmenter(source["image"])
        losses = {"loss/seg_src": segmentation_cross_entropy(outputs["logits"], source["mask"])}
        loss = losses["loss/seg_src"]
        if "aux_logits" in outputs:
            losses["loss/seg_src_aux"] = segmentation_cross_entropy(outputs["aux_logits"], source["mask"])
            loss = loss + self.cfg.seg_aux_weight * losses["loss/seg_src_aux"]
        ctx.backward(loss)
        return outputs, losses

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        segmenter = models["segmenter"]
        source, target = batches["source"], batches["target"]
        levels = [level for level in ("main", "aux") if f"discriminator_{level}" in models]
        size_src, size_tgt = tuple(source["image"].shape[-2:]), tuple(target["image"].shape[-2:])

        # (1) Segmentation on source.
        outputs_src, losses = self.segment_source(segmenter, source, ctx)
        # detach: D's step below must not push gradients into the segmenter.
        maps_src = self._maps({k: v.detach() for k, v in outputs_src.items()}, size_src, levels)

        # (2) Fool the frozen discriminators on target: target maps should be scored as source.
        maps_tgt = self._maps(segmenter(target["image"]), size_tgt, levels)
        weights = self.adversarial_weights()
        loss_adversarial = 0.0
        for level in levels:
            with frozen(models[f"discriminator_{level}"]) as discriminator:
                loss = self.domain_loss(discriminator(maps_tgt[level]), SOURCE_DOMAIN)
            losses[f"loss/adv_tgt{_suffix(level)}"] = loss
            loss_adversarial = loss_adversarial + weights[level] * loss
        ctx.backward(loss_adversarial)
        ctx.step("segmenter")

        # (3) Discriminators: source maps -> 0, target maps -> 1, both detached.
        for level in levels:
            name = f"discriminator_{level}"
            discriminator = models[name]
            loss_src = self.domain_loss(discriminator(maps_src[level]), SOURCE_DOMAIN)
            loss_tgt = self.domain_loss(discriminator(maps_tgt[level].detach()), TARGET_DOMAIN)
            ctx.backward(self.cfg.disc_domain_weight * (loss_src + loss_tgt))
            ctx.step(name)
            losses[f"loss/disc_src{_suffix(level)}"] = loss_src
            losses[f"loss/disc_tgt{_suffix(level)}"] = loss_tgt
        return {key: value.detach() for key, value in losses.items()}


def _suffix(level: str) -> str:
    """Loss-key suffix of a level: none for the main head, ``_aux`` for the auxiliary one."""
    return "" if level == "main" else "_aux"


@register_method
class AdaptSegNet(OutputSpaceAdaptation):
    """AdaptSegNet: the discriminators see each head's softmax probabilities (docs/spec.md §4.2)."""

    config_class = AdaptSegNetConfig

    def discriminator_input(self, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def adversarial_weights(self) -> dict[str, float]:
        return {"main": self.cfg.adv_main_weight, "aux": self.cfg.adv_aux_weight}


class LeastSquaresAdaptation(OutputSpaceAdaptation):
    """The single-level output-space step with the least-squares GAN loss (``domain_mse``) on
    softmax maps: the warm-ups of IAST (``iast_warmup``) and ProDA (``proda_warmup``), which
    differ in their discriminator and weights. Their configs are ``AdaptSegNetConfig``s whose aux
    fields are unused.
    """

    def check_config(self, cfg: ExperimentConfig) -> None:
        super().check_config(cfg)
        if cfg.model.multi_level:
            raise ValueError(
                f"method {self.cfg.name} is single-level (one discriminator); set model.multi_level: false"
            )

    def discriminator_input(self, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def adversarial_weights(self) -> dict[str, float]:
        return {"main": self.cfg.adv_main_weight}

    def domain_loss(self, disc_outputs: torch.Tensor, label: float) -> torch.Tensor:
        return domain_mse(disc_outputs, label)
