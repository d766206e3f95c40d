"""ProDA stages 2 and 3: knowledge distillation into a fresh student (``step_distillation``).

*Prototypical Pseudo Label Denoising and Target Structure Learning for Domain Adaptive Semantic
Segmentation*, Zhang et al., CVPR 2021 (official code: github.com/microsoft/ProDA,
``CustomModel.step_distillation`` and ``generate_pseudo_label.py --flip``). docs/proda.md
describes the official stages and where this method differs.

Models: ``segmenter`` (the student; ``model.init_checkpoint``, officially a self-supervised
SimCLR backbone with ``model.init_backbone_only: true``; the only optimiser) and ``teacher`` (the
previous stage's model, loaded from ``method.teacher_checkpoint``, frozen, kept in eval mode by
the trainer, no optimiser). Per step:

1. source CE at full resolution, backward at once;
2. teacher, no grad: hard pseudo labels of the full target image, the softmax averaged with the
   softmax of its horizontally flipped image (flipped back), both upsampled to the input size;
   label = argmax, ignored where the averaged top probability is ``<= pseudo_threshold``
   (official 0.95; ``generate_pseudo_label.py`` + the loader's ``conf <= threshold``). The
   official code writes these once to files before the stage; here they come online;
3. views: the labels taken to ``1 / label_downsample`` (nearest) and mapped into the strong view
   (stage 1's ``strong_view`` of a per-image flip; cutout pixels ignored);
4. student on the strong view: ``pseudo_weight`` x CE on those labels + ``distill_weight`` x the
   teacher term between the student's and the teacher's strong-view softmax (``kl_form``);
5. one optimiser step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossregion.config.schema import ExperimentConfig
from crossregion.data.labels import IGNORE_INDEX
from crossregion.dist import unwrap
from crossregion.engine.trainer import StepContext
from crossregion.methods.base import (
    Method,
    check_choice,
    check_fraction,
    check_non_negative,
    frozen_copy,
    register_method,
)
from crossregion.methods.losses import masked_cross_entropy, resize_aligned, segmentation_cross_entropy
from crossregion.methods.proda_losses import DISTILL_PSEUDO_THRESHOLD, DISTILL_WEIGHT
from crossregion.methods.proda_views import ProdaViewConfig, flip_where, target_views

# The teacher term's two forms (docs/proda.md, difference 12).
KL_FORMS = ("official", "true_kl")


@dataclass(frozen=True)
class ProdaDistillConfig(ProdaViewConfig):
    """ProDA stage-2/3 constants; defaults are the official README stage-2/3 commands'."""

    name: str = "proda_distill"
    # The previous stage's checkpoint (ours, or an official ProDA .pkl without bn_pretrain):
    # the frozen teacher. Required.
    teacher_checkpoint: str | None = None
    # Weight of the source CE (official: 1, backward at once).
    source_weight: float = 1.0
    # Weight of the CE on the thresholded hard pseudo labels (official: plain CE, no --rce).
    pseudo_weight: float = 1.0
    # Pixels whose flip-averaged teacher confidence is <= this are ignored (--threshold 0.95).
    pseudo_threshold: float = DISTILL_PSEUDO_THRESHOLD
    # Average the teacher's softmax with that of the flipped image (generate_pseudo_label --flip).
    pseudo_flip: bool = True
    # Weight of the teacher term (--distillation 1); 0 switches it off.
    distill_weight: float = DISTILL_WEIGHT
    # "official": F.kl_div(student *probabilities*, teacher), i.e. mean over pixels and classes of
    # p_t (log p_t - p_s); "true_kl": the same reduction of p_t (log p_t - log p_s), i.e. the
    # per-pixel KL(teacher || student) / K (docs/proda.md, difference 12).
    kl_form: str = "official"
    # The views are stage 1's (ProdaViewConfig): per-image flip, then the strong view's photometric
    # jitter, noise and cutout (official S_pseudo 1: student and teacher on the strong view).

    def __post_init__(self) -> None:
        if self.teacher_checkpoint is None or not str(self.teacher_checkpoint).strip():
            raise ValueError(
                "method.teacher_checkpoint is required: the previous ProDA stage's checkpoint (the frozen teacher)"
            )
        check_non_negative(self, "source_weight", "pseudo_weight", "distill_weight")
        if self.pseudo_weight + self.distill_weight <= 0:
            raise ValueError("method.pseudo_weight + method.distill_weight must be positive (else no target loss)")
        check_fraction(self, "pseudo_threshold")
        check_choice(self, "kl_form", KL_FORMS)
        self.check_views()


def flip_averaged_pseudo_labels(
    probs: torch.Tensor,
    flipped_probs: torch.Tensor | None,
    *,
    threshold: float = DISTILL_PSEUDO_THRESHOLD,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard labels and confidences from teacher probabilities (``generate_pseudo_label.py --flip``).

    ``probs``: softmax of the image; ``flipped_probs``: softmax of the horizontally flipped image
    (or None: no flip average). Labels whose averaged top probability is ``<= threshold`` become
    ``ignore_index`` (the loader's ``lp[conf <= threshold] = 250``).

    Shape:
        - probs, flipped_probs: (N, K, H, W)
        - outputs: labels (N, H, W) long, confidences (N, H, W)
    """
    if flipped_probs is not None:
        probs = (probs + flipped_probs.flip(-1)) / 2
    confidence, labels = probs.max(dim=1)
    labels = labels.masked_fill(confidence <= threshold, ignore_index)
    return labels, confidence


def distillation_term(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, form: str = "official"
) -> torch.Tensor:
    """The teacher term, averaged over pixels and classes (the official ``sum / mask.sum()``
    with its always-true mask).

    ``official``: ``F.kl_div(softmax(student), teacher)``, i.e. ``p_t (log p_t - p_s)``;
    ``true_kl``: ``F.kl_div(log_softmax(student), teacher)``, i.e. ``p_t (log p_t - log p_s)``.

    Shape:
        - student_logits, teacher_probs: (N, K, H, W)
        - output: scalar
    """
    if form == "official":
        student = F.softmax(student_logits, dim=1)
    elif form == "true_kl":
        student = F.log_softmax(student_logits, dim=1)
    else:
        raise ValueError(f"kl_form must be one of {KL_FORMS}, got {form!r}")
    return F.kl_div(student, teacher_probs, reduction="none").mean()


@register_method
class ProdaDistill(Method):
    """ProDA stage 2/3 (one source and one target batch per iteration); see the module docstring."""

    config_class = ProdaDistillConfig
    required_batches = ("source", "target")

    def __init__(self, cfg: ProdaDistillConfig, *, num_classes: int, backbone: str, head: str) -> None:
        super().__init__(cfg, num_classes=num_classes)
        # The student's architecture, which the teacher checkpoint must have.
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> ProdaDistill:
        return cls(cfg.method, num_classes=cfg.model.num_classes, backbone=cfg.model.backbone, head=cfg.model.head)

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        """The student and the frozen teacher from ``method.teacher_checkpoint`` (same architecture)."""
        from crossregion.models import load_segmenter

        path = self.cfg.teacher_checkpoint
        try:
            loaded, info = load_segmenter(path, num_classes=self.num_classes, backbone=self.backbone, head=self.head)
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"method.teacher_checkpoint: {error}") from error
        if info["input_norm"] != segmenter.input_norm:
            # The teacher sees the student's batches, so both must expect the same input scaling.
            raise ValueError(
                f"method.teacher_checkpoint {path} expects {info['input_norm']}-normalised input but the "
                f"student is fed {segmenter.input_norm}-normalised input; set model.input_norm={info['input_norm']}"
            )
        teacher = frozen_copy(segmenter)
        state = loaded.state_dict()
        own = teacher.state_dict()
        # A multi-level teacher's auxiliary head has no place in a single-level model.
        state = {key: value for key, value in state.items() if key in own or not key.startswith("aux_classifier.")}
        missing, unexpected = teacher.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(
                f"method.teacher_checkpoint {path} does not fit the student's model: "
                f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
            )
        return {"segmenter": segmenter, "teacher": teacher}

    def frozen_models(self) -> tuple[str, ...]:
        return ("teacher",)

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        segmenter, teacher = models["segmenter"], models["teacher"]
        source, target = batches["source"], batches["target"]

        # (1) Source CE at full resolution; backward at once.
        loss_src = segmentation_cross_entropy(segmenter(source["image"])["logits"], source["mask"])
        ctx.backward(cfg.source_weight * loss_src)

        full = target["image"]
        h, w = full.shape[-2:]
        views = target_views(full, cfg, input_norm=unwrap(segmenter).input_norm)

        # (2) Teacher, no grad, in eval mode (frozen_models).
        with torch.no_grad():
            probs = F.softmax(teacher(full)["logits"].float(), dim=1)
            probs = resize_aligned(probs, (h, w))
            flipped = None
            if cfg.pseudo_flip:
                flipped = resize_aligned(F.softmax(teacher(full.flip(-1))["logits"].float(), dim=1), (h, w))
            labels, _ = flip_averaged_pseudo_labels(probs, flipped, threshold=cfg.pseudo_threshold)
            # (3) To the label resolution (nearest, as the official scale_factor 0.25), into the
            # strong view: the flip, and the cutout box ignored.
            labels = F.interpolate(labels[:, None].float(), size=views.size, mode="nearest")[:, 0].long()
            labels = flip_where(labels, views.flip)
            labels = labels.masked_fill(~views.label_valid, IGNORE_INDEX)
            teacher_probs = None
            if cfg.distill_weight > 0:
                teacher_probs = F.softmax(resize_aligned(teacher(views.strong)["logits"].float(), views.size), dim=1)

        # (4) Student on the strong view.
        logits = resize_aligned(segmenter(views.strong)["logits"], views.size).float()
        loss_pseudo = masked_cross_entropy(logits, labels)
        loss = cfg.pseudo_weight * loss_pseudo
        if teacher_probs is not None:
            loss_kd = distillation_term(logits, teacher_probs, cfg.kl_form)
            loss = loss + cfg.distill_weight * loss_kd
        else:
            loss_kd = loss_pseudo.new_zeros(())
        ctx.backward(loss)
        ctx.step("segmenter")
        losses = {"loss/seg_src": loss_src, "loss/pseudo_tgt": loss_pseudo, "loss/distill_tgt": loss_kd}
        return {key: value.detach() for key, value in losses.items()}
