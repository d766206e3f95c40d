"""FADA: fine-grained (class-aware) feature-level adversarial adaptation (docs/spec.md §2.1–§2.3).

*Classes Matter: A Fine-grained Adversarial Approach to Cross-domain Semantic Segmentation*,
Wang et al., ECCV 2020, arXiv:2007.09222. The CDA stage of the official CRA pipeline
(``train_cda.py`` = FADA's ``train_adv.py``), started from a source-only checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossregion.config.schema import ExperimentConfig, MethodConfig
from crossregion.engine.trainer import StepContext
from crossregion.methods.base import Method, check_non_negative, check_positive, frozen, register_method
from crossregion.methods.cra_losses import domain_targets, soft_domain_labels, soft_label_cross_entropy
from crossregion.methods.losses import SOURCE_DOMAIN, TARGET_DOMAIN, resize_aligned, segmentation_cross_entropy
from crossregion.models import FineGrainedDiscriminator


@dataclass(frozen=True)
class FadaConfig(MethodConfig):
    """FADA constants, as the official code (deeplabv2_r101_adv.yaml, train_adv.py)."""

    name: str = "fada"
    # T: divides the upsampled logits of the source CE *and* of the soft domain labels.
    temperature: float = 1.8
    # Soft domain labels a = min(softmax(z / T), clip), not renormalised.
    soft_label_clip: float = 0.9
    # Weight of the target adversarial loss in the segmenter's objective.
    adv_weight: float = 0.001
    # Discriminator loss = disc_source_weight · CE(source -> [a_s; 0])
    #                    + disc_target_weight · CE(target -> [0; a_t]).
    disc_source_weight: float = 0.5
    disc_target_weight: float = 0.5
    # Width of the discriminator's first conv; the second has half (official: 256 -> 128).
    disc_mid_channels: int = 256

    def __post_init__(self) -> None:
        check_positive(self, "temperature")
        if not 0 < self.soft_label_clip <= 1:
            raise ValueError(f"method.soft_label_clip must be in (0, 1], got {self.soft_label_clip}")
        check_non_negative(self, "adv_weight", "disc_source_weight", "disc_target_weight")
        if self.disc_mid_channels < 2:
            raise ValueError(f"method.disc_mid_channels must be >= 2, got {self.disc_mid_channels}")


@register_method
class Fada(Method):
    """FADA's CDA step, one source and one target batch per iteration (docs/spec.md §2.3).

    Phases: (1) source CE on logits / T, backward; (2) target forward, the frozen fine-grained
    discriminator scores the target features, and the segmenter is pushed towards "source with
    the same class" ([a_t; 0]), backward, SGD step; (3) the discriminator learns [a_s; 0] for
    source and [0; a_t] for target features, both detached, Adam step. The discriminator's
    logits are upsampled to each batch's image size before the soft-label CE.
    """

    config_class = FadaConfig
    required_batches = ("source", "target")

    def check_config(self, cfg: ExperimentConfig) -> None:
        super().check_config(cfg)
        if cfg.model.multi_level:
            # An auxiliary head would get no loss here (and DDP rejects parameters without gradients).
            raise ValueError("method fada trains a single-level segmenter; set model.multi_level: false")

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        discriminator = FineGrainedDiscriminator(
            segmenter.feature_channels, self.num_classes, mid_channels=self.cfg.disc_mid_channels
        )
        return {"segmenter": segmenter, "discriminator": discriminator}

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        segmenter, discriminator = models["segmenter"], models["discriminator"]
        source, target = batches["source"], batches["target"]
        size_src, size_tgt = tuple(source["image"].shape[-2:]), tuple(target["image"].shape[-2:])
        temperature, clip = self.cfg.temperature, self.cfg.soft_label_clip

        # (1) Source CE with temperature; backward now so the source graph is freed.
        outputs_src = segmenter(source["image"])
        logits_src = resize_aligned(outputs_src["logits"], size_src)
        loss_seg = segmentation_cross_entropy(logits_src, source["mask"], temperature=temperature)
        ctx.backward(loss_seg)
        soft_labels_src = soft_domain_labels(logits_src, temperature, clip)
        # detach: D's step must not push gradients into the segmenter.
        features_src = outputs_src["features"].detach()

        # (2) Fool the frozen discriminator: target features should look like source of the same class.
        outputs_tgt = segmenter(target["image"])
        logits_tgt = resize_aligned(outputs_tgt["logits"], size_tgt)
        soft_labels_tgt = soft_domain_labels(logits_tgt, temperature, clip)
        with frozen(discriminator) as frozen_discriminator:
            disc_logits = resize_aligned(frozen_discriminator(outputs_tgt["features"]), size_tgt).float()
            loss_adv = soft_label_cross_entropy(disc_logits, domain_targets(soft_labels_tgt, SOURCE_DOMAIN))
        ctx.backward(self.cfg.adv_weight * loss_adv)
        ctx.step("segmenter")

        # (3) Discriminator on detached features: source -> [a_s; 0], target -> [0; a_t].
        disc_logits_src = resize_aligned(discriminator(features_src), size_src).float()
        targets_src = domain_targets(soft_labels_src, SOURCE_DOMAIN)
        loss_disc_src = soft_label_cross_entropy(disc_logits_src, targets_src)
        disc_logits_tgt = resize_aligned(discriminator(outputs_tgt["features"].detach()), size_tgt).float()
        targets_tgt = domain_targets(soft_labels_tgt, TARGET_DOMAIN)
        loss_disc_tgt = soft_label_cross_entropy(disc_logits_tgt, targets_tgt)
        ctx.backward(self.cfg.disc_source_weight * loss_disc_src + self.cfg.disc_target_weight * loss_disc_tgt)
        ctx.step("discriminator")

        losses = {
            "loss/seg_src": loss_seg,
            "loss/adv_tgt": loss_adv,
            "loss/disc_src": loss_disc_src,
            "loss/disc_tgt": loss_disc_tgt,
        }
        return {key: value.detach() for key, value in losses.items()}
