"""IAST: the adversarial warm-up and one online self-training round (docs/iast.md, phase 2).

*Instance Adaptive Self-Training for Unsupervised Domain Adaptation*, Mei et al., ECCV 2020,
arXiv:2008.12197. The selector is ``methods/iast_selector.py``, the regularisers
``methods/iast_losses.py``, the warm-up's LSGAN loss ``methods/adaptsegnet.py``; this file puts
them on the method API:

- ``iast_warmup``: the single-level least-squares output-space step (``LeastSquaresAdaptation``,
  shared with ProDA's warm-up) with IAST's discriminator (3x3 first conv) and λ_adv.
- ``iast``: one self-training round, online. A frozen teacher (the round's starting model, a copy
  of the segmenter as ``model.init_checkpoint`` loaded it) predicts each target batch; the
  ``InstanceAdaptiveSelector`` (the method's per-run state) turns its softmax into hard pseudo
  labels; the student trains with CE on the selected pixels plus the region-guided
  regularisation. The official code labels the whole target set offline before the round
  instead; docs/iast.md ("Online round") lists what that changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossregion.config.schema import MethodConfig
from crossregion.data.labels import IGNORE_INDEX
from crossregion.dist import unwrap
from crossregion.engine.trainer import StepContext
from crossregion.methods.adaptsegnet import AdaptSegNetConfig, LeastSquaresAdaptation
from crossregion.methods.base import Method, check_non_negative, frozen_copy, register_method
from crossregion.methods.iast_losses import (
    ENTROPY_REGULARISATION_WEIGHT,
    KLD_REGULARISATION_WEIGHT,
    WARMUP_ADVERSARIAL_WEIGHTS,
    region_guided_regularisation,
)
from crossregion.methods.iast_selector import (
    INITIAL_CLASS_THRESHOLD,
    ROUND_PROPORTIONS,
    THRESHOLD_CAP,
    THRESHOLD_DECAY,
    THRESHOLD_MOMENTUM,
    InstanceAdaptiveSelector,
)
from crossregion.methods.losses import masked_cross_entropy, resize_aligned
from crossregion.models import OutputSpaceDiscriminator

# IAST's FCDiscriminator: AdaptSegNet's with a 3x3 first conv.
IAST_DISCRIMINATOR_FIRST_KERNEL = 3


# ------------------------------------------------------------------------------- warm-up


@dataclass(frozen=True)
class IastWarmupConfig(AdaptSegNetConfig):
    """IAST's warm-up (official ``warmup_at.yaml``): single-level, least-squares GAN.

    Segmenter: source CE + ``adv_main_weight`` · MSE(D(p_t), 0); D: ``disc_domain_weight`` ·
    [MSE(D(p_s), 0) + MSE(D(p_t), 1)], i.e. the official ½·(…). The aux fields of
    ``AdaptSegNetConfig`` are unused (IAST's warm-up has one discriminator).
    """

    name: str = "iast_warmup"
    # λ_adv: 0.05 for GTA5 (official); 0.001 for SYNTHIA (WARMUP_ADVERSARIAL_WEIGHTS["synthia"]).
    adv_main_weight: float = WARMUP_ADVERSARIAL_WEIGHTS["gta5"]
    disc_domain_weight: float = 0.5
    disc_width: int = 64


@register_method
class IastWarmup(LeastSquaresAdaptation):
    """The single-level least-squares step with IAST's discriminator and weight."""

    config_class = IastWarmupConfig

    def build_discriminator(self) -> nn.Module:
        return OutputSpaceDiscriminator(
            self.num_classes, ndf=self.cfg.disc_width, first_kernel=IAST_DISCRIMINATOR_FIRST_KERNEL
        )


# -------------------------------------------------------------------- self-training round


@dataclass(frozen=True)
class IastConfig(MethodConfig):
    """One IAST self-training round (official ``sl_1.yaml``; rounds 2 and 3 raise ``proportion``)."""

    name: str = "iast"
    # α: base proportion of each class's pixels kept: 0.2 / 0.25 / 0.3 in rounds 1 / 2 / 3.
    proportion: float = ROUND_PROPORTIONS[0]
    # γ: the kept proportion is α θ_c^γ (official configs 8; the code's default 1).
    decay: float = THRESHOLD_DECAY
    # β: θ_c ← β θ_c + (1 − β) θ_batch.
    momentum: float = THRESHOLD_MOMENTUM
    # θ of every class at the start of the round.
    initial_threshold: float = INITIAL_CLASS_THRESHOLD
    # A threshold that reaches 1 is put back to this.
    cap: float = THRESHOLD_CAP
    # λ of the KL-to-uniform term on selected pixels and of the entropy term on ignored ones.
    kld_weight: float = KLD_REGULARISATION_WEIGHT
    entropy_weight: float = ENTROPY_REGULARISATION_WEIGHT

    def __post_init__(self) -> None:
        if not 0.0 < self.proportion <= 1.0:
            raise ValueError(f"method.proportion (IAST α) must be in (0, 1], got {self.proportion}")
        if self.decay < 0.0:
            raise ValueError(f"method.decay (IAST γ) must be >= 0, got {self.decay}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"method.momentum (IAST β) must be in [0, 1), got {self.momentum}")
        for key in ("initial_threshold", "cap"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ValueError(f"method.{key} must be in (0, 1), got {getattr(self, key)}")
        check_non_negative(self, "kld_weight", "entropy_weight")


@register_method
class Iast(Method):
    """One online IAST round: teacher → selector → hard labels → CE + region-guided regularisation.

    Models: ``segmenter`` (the student, trained) and ``teacher`` (a frozen copy of the segmenter
    as built, i.e. ``model.init_checkpoint``; kept in eval mode by the trainer, no optimiser, saved
    in checkpoints so a resumed run has it). The selector's thresholds are ``state_dict``: they move once per step,
    on that step's batch, and ``--resume`` restores them.

    Under several processes every rank carries its own thresholds over its own batches (as the
    official generation does over its shard); checkpoints keep rank 0's.
    """

    config_class = IastConfig
    required_batches = ("target",)
    init_checkpoint_role = (
        "the round's starting model (the warm-up's or the previous round's checkpoint), which the frozen teacher copies"
    )

    def __init__(self, cfg: IastConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.selector = InstanceAdaptiveSelector(
            num_classes,
            proportion=cfg.proportion,
            decay=cfg.decay,
            momentum=cfg.momentum,
            initial_threshold=cfg.initial_threshold,
            cap=cfg.cap,
        )

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        return {"segmenter": segmenter, "teacher": frozen_copy(segmenter)}

    def frozen_models(self) -> tuple[str, ...]:
        return ("teacher",)

    @torch.no_grad()
    def pseudo_labels(self, teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The teacher's hard labels of ``images`` (255 = ignored); moves the thresholds once.

        The teacher runs in float32 with autocast off, whatever ``engine.amp`` says: the official
        code generates its labels before apex (O1, fp16) wraps the model, so in fp32, and the
        selector's quantiles are sensitive to the confidences' precision.

        Shape:
            - images: (N, 3, H, W)
            - output: (N, H, W) int64
        """
        teacher = unwrap(teacher)
        with torch.autocast(images.device.type, enabled=False):
            logits = teacher(images.float())["logits"]
        probs = F.softmax(resize_aligned(logits.float(), tuple(images.shape[-2:])), dim=1)
        return self.selector.select(probs)

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        target = batches["target"]
        labels = self.pseudo_labels(models["teacher"], target["image"])
        logits = models["segmenter"](target["image"])["logits"]
        # The official CE is a plain mean over the selected pixels, NaN when none is; here such a
        # batch gives 0 (as the regularisers do, docs/iast.md point 7).
        seg = masked_cross_entropy(resize_aligned(logits, tuple(labels.shape[-2:])).float(), labels)
        regularisers = region_guided_regularisation(
            logits, labels, kld_weight=self.cfg.kld_weight, entropy_weight=self.cfg.entropy_weight
        )
        ctx.backward(seg + regularisers["kld_reg_loss"] + regularisers["entropy_reg_loss"])
        ctx.step("segmenter")
        return {
            "loss/seg_tgt": seg.detach(),
            "loss/kld_reg_tgt": regularisers["kld_reg_loss"].detach(),
            "loss/entropy_reg_tgt": regularisers["entropy_reg_loss"].detach(),
            # Not a loss: the share of target pixels the selector kept, logged with the losses.
            "stat/selected_share": (labels != IGNORE_INDEX).float().mean(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"selector": self.selector.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "selector" not in state:
            raise ValueError(f"an IAST checkpoint holds the selector's thresholds; this one holds {sorted(state)}")
        self.selector.load_state_dict(state["selector"])
