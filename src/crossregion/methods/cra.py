"""Cross-Region Adaptation (CRA).

"Cross-Region Domain Adaptation for Class-level Alignment", Wang et al., arXiv 2109.06422.

Starts from any stage-1 (CDA) checkpoint and a pseudo-label store of target train made with it.
Target pixels are split by their rare-class-scaled entropy into a trusted region (self-trained
on its pseudo labels) and an untrusted region, whose features a fine-grained discriminator
aligns, class by class, with those of the trusted region. One iteration, official-code
semantics (docs/spec.md §1.5; ``update_mode: summed``):

1. one forward pass of the target batch; trusted/untrusted masks from ẽ = e · r[ŷ];
2. self-training CE on trusted pixels of the logits / T;
3. generator adversarial loss: untrusted pixels scored by D against the *trusted* channels,
   with soft labels clip(softmax(z / T)) as class weights; one SGD step on both gradients;
4. D on the detached features: trusted pixels -> channels [0, K), untrusted -> [K, 2K); Adam.

``update_mode: successive`` follows the paper's text instead: an SGD step on the self-training
loss, then a second forward pass at the updated weights and a second step on the adversarial
loss (``docs/cra.md`` lists every difference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crossregion.config.schema import OptimConfig
from crossregion.dist import unwrap
from crossregion.engine.optim import build_discriminator_adam, build_segmenter_optimizer
from crossregion.engine.trainer import StepContext
from crossregion.methods.base import check_choice, check_non_negative, check_positive, frozen, register_method
from crossregion.methods.cra_losses import (
    discriminator_region_accuracy,
    domain_targets,
    soft_domain_labels,
    soft_label_cross_entropy,
)
from crossregion.methods.losses import SOURCE_DOMAIN, TARGET_DOMAIN, resize_aligned
from crossregion.methods.self_training import (
    RegionConfig,
    RegionMethod,
    gradient_norm_ratio,
    trusted_cross_entropy,
)

UPDATE_MODES = ("summed", "successive")


@dataclass(frozen=True)
class CRAConfig(RegionConfig):
    """CRA's constants (docs/spec.md §1.4–§1.6); defaults are the official code's."""

    name: str = "cra"
    # T of the soft labels a = clip(softmax(z / T)) (official 1.8).
    soft_label_temperature: float = 1.8
    # Upper bound of each soft-label entry, not renormalised after clipping (official 0.9).
    soft_label_clip: float = 0.9
    # Weight of the generator's adversarial loss (official 0.001; the paper gives none).
    adv_weight: float = 0.001
    # Weights of D's losses on the trusted and the untrusted region (official 0.5 and 0.5).
    disc_weight_trusted: float = 0.5
    disc_weight_untrusted: float = 0.5
    # "summed": one SGD step on the summed self-training and adversarial gradients (official);
    # "successive": a self-training step, then a second forward and an adversarial step (paper),
    # weight decay in the first step only; needs bn_momentum null (it forwards twice itself).
    update_mode: str = "summed"
    # A CDA checkpoint (ours or official) whose fine-grained discriminator D starts from; None =
    # a fresh D, as the official code (its D loading is commented out; the paper fine-tunes it).
    discriminator_checkpoint: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "update_mode", UPDATE_MODES)
        if self.update_mode == "successive" and self.bn_momentum is not None:
            # bn_momentum stands for the official step's two BatchNorm updates per iteration
            # folded into our single forward (0.19 = 1 - 0.9^2). "successive" forwards the batch
            # twice itself, so statistics would move twice with it (1 - 0.81^2 = 0.34 per
            # iteration for 0.19); with null they move twice with PyTorch's 0.1, the official rate.
            raise ValueError(
                f"method.update_mode=successive forwards every batch twice, so BatchNorm statistics already "
                f"move twice per iteration (momentum 0.1 each = the official 0.19); method.bn_momentum="
                f"{self.bn_momentum} would be applied on top of that. Set method.bn_momentum=null with "
                "update_mode=successive (as cra_paper does), or keep bn_momentum=0.19 with update_mode=summed"
            )
        check_positive(self, "soft_label_temperature")
        if not 0.0 < self.soft_label_clip <= 1.0:
            raise ValueError(f"method.soft_label_clip must be in (0, 1], got {self.soft_label_clip}")
        check_non_negative(self, "adv_weight", "disc_weight_trusted", "disc_weight_untrusted")


@register_method
class CRA(RegionMethod):
    """Self-training on trusted pixels plus fine-grained alignment of untrusted to trusted features.

    Models: ``segmenter`` (SGD, head at ``optim.head_lr_mult``) and ``discriminator`` (a
    ``FineGrainedDiscriminator`` on the segmenter's features; Adam). ``update_mode:
    successive`` adds ``segmenter_adv``, a second SGD optimiser of the same parameters for the
    adversarial step (the trainer steps every optimiser once per iteration); its momentum
    buffer is its own and it has no weight decay (``segmenter`` applies it once per iteration).
    """

    config_class = CRAConfig
    init_checkpoint_role = "the stage-1 (CDA) model the pseudo-label store was made with"

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        from crossregion.models import FineGrainedDiscriminator

        models = super().build_models(segmenter)
        discriminator = FineGrainedDiscriminator(unwrap(segmenter).feature_channels, self.num_classes)
        if self.cfg.discriminator_checkpoint is not None:
            discriminator.load_state_dict(self._checkpoint_discriminator_state())
        return {**models, "discriminator": discriminator}

    def _checkpoint_discriminator_state(self) -> dict[str, torch.Tensor]:
        from crossregion.models.checkpoint_io import load_segmenter

        path = self.cfg.discriminator_checkpoint
        _, info = load_segmenter(path, num_classes=self.num_classes)
        if info["discriminator_state"] is None:
            raise ValueError(
                f"method.discriminator_checkpoint {path} holds no fine-grained discriminator "
                "(a FADA checkpoint has one); set method.discriminator_checkpoint=null for a fresh D"
            )
        return info["discriminator_state"]

    def build_optimizers(self, models: Mapping[str, nn.Module], optim: OptimConfig) -> dict[str, torch.optim.Optimizer]:
        optimizers = {
            "segmenter": build_segmenter_optimizer(models["segmenter"], optim),
            "discriminator": build_discriminator_adam(models["discriminator"], optim),
        }
        if self.cfg.update_mode == "successive":
            # Weight decay is part of the objective, applied once per iteration: by the first
            # step. With decay here too, the backbone (which the adversarial loss reaches) would
            # shrink twice per iteration; the head gets no adversarial gradient, so this step
            # skips it anyway.
            adv_optim = dataclasses.replace(optim, weight_decay=0.0)
            optimizers["segmenter_adv"] = build_segmenter_optimizer(models["segmenter"], adv_optim)
        return optimizers

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        self.prepare_segmenter(models["segmenter"])
        target = batches["target"]
        pseudo_label = target["pseudo_mask"]
        crop_size = tuple(pseudo_label.shape[-2:])
        trusted, untrusted = self.region_masks(target)

        # (1) self-training on the trusted region.
        outputs = models["segmenter"](target["image"])
        logits = resize_aligned(outputs["logits"], crop_size)
        loss_seg = trusted_cross_entropy(logits, pseudo_label, trusted, cfg.seg_temperature, cfg.trusted_ce_weighting)
        if cfg.update_mode == "successive":
            ctx.backward(loss_seg)
            ctx.step("segmenter")
            # The paper's second G update is computed at the updated weights: a second forward.
            outputs = models["segmenter"](target["image"])
            logits = resize_aligned(outputs["logits"], crop_size)
        soft_labels = soft_domain_labels(logits, cfg.soft_label_temperature, cfg.soft_label_clip)

        # (2) generator: untrusted features should look trusted, with the same class distribution.
        with frozen(models["discriminator"]) as discriminator:
            disc_logits = resize_aligned(discriminator(outputs["features"]), crop_size)
            loss_adv = soft_label_cross_entropy(disc_logits, domain_targets(soft_labels, SOURCE_DOMAIN), untrusted)
        diagnostics = {}
        if cfg.update_mode == "summed" and self.diagnostics_due(ctx):
            diagnostics["diag/grad_ratio"] = gradient_norm_ratio(
                cfg.adv_weight * loss_adv, loss_seg, models["segmenter"]
            )
        if cfg.update_mode == "successive":
            ctx.backward(cfg.adv_weight * loss_adv)
            ctx.step("segmenter_adv")
        else:
            ctx.backward(loss_seg + cfg.adv_weight * loss_adv)
            ctx.step("segmenter")

        # (3) discriminator on detached features: D must not push gradients into the segmenter.
        disc_logits = resize_aligned(models["discriminator"](outputs["features"].detach()), crop_size)
        loss_disc_trusted = soft_label_cross_entropy(disc_logits, domain_targets(soft_labels, SOURCE_DOMAIN), trusted)
        loss_disc_untrusted = soft_label_cross_entropy(
            disc_logits, domain_targets(soft_labels, TARGET_DOMAIN), untrusted
        )
        ctx.backward(cfg.disc_weight_trusted * loss_disc_trusted + cfg.disc_weight_untrusted * loss_disc_untrusted)
        ctx.step("discriminator")
        accuracy_trusted, accuracy_untrusted = discriminator_region_accuracy(disc_logits.detach(), trusted, untrusted)
        return {
            "loss/seg_trusted": loss_seg.detach(),
            "loss/adv_untrusted": loss_adv.detach(),
            "loss/disc_trusted": loss_disc_trusted.detach(),
            "loss/disc_untrusted": loss_disc_untrusted.detach(),
            "diag/disc_acc_trusted": accuracy_trusted,
            "diag/disc_acc_untrusted": accuracy_untrusted,
            **diagnostics,
        }
