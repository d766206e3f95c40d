"""ProDA stage 1: prototypical pseudo-label denoising and target structure learning.

*Prototypical Pseudo Label Denoising and Target Structure Learning for Domain Adaptive Semantic
Segmentation*, Zhang et al., CVPR 2021 (official code: github.com/microsoft/ProDA,
``CustomModel.step``). Runs after a warm-up (CDA) model with ProDA's head (``model.head:
proda``); docs/proda.md describes the official step, the constants and where this one differs.

Models: ``segmenter`` (the student, trained by SGD/Adam), ``ema`` (the momentum teacher, a copy,
no optimiser, ``e <- d e + (1 - d) s`` in ``after_step``, BatchNorm buffers copied; in the
configured ``ema_mode``) and ``warmup`` (a frozen copy of the starting model in eval mode that
supplies the soft pseudo labels online; the official code stores its softmax once before stage
1). Per-run state: the class prototypes (``Prototypes``), computed in ``on_train_start`` from the
warm-up model over un-augmented target train (``calc_prototype.py``) unless restored by
``--resume``, and moved once per iteration in ``after_step`` from the EMA model's full-image
features.

The weak and strong views are ``methods/proda_views.py``'s. All target losses and prototype work
happen at ``1 / label_downsample`` of the input resolution (bilinear from the stride-8 outputs,
as the official 1/4); the source CE at full resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crossregion.config.schema import ExperimentConfig
from crossregion.dist import get_world_size, unwrap
from crossregion.engine.trainer import StepContext
from crossregion.methods.base import (
    UNAUGMENTED_TARGET,
    Method,
    check_choice,
    check_fraction,
    check_non_negative,
    check_positive,
    frozen_copy,
    register_method,
)
from crossregion.methods.ema import EMA_DECAY, update_ema_model
from crossregion.methods.losses import resize_aligned, segmentation_cross_entropy
from crossregion.methods.proda_losses import (
    PROTO_CONSIST_WEIGHT,
    PROTO_TEMPERATURE,
    RCE_ALPHA,
    RCE_BETA,
    RECTIFY_THRESHOLD,
    REGULAR_TYPES,
    REGULAR_WEIGHT_GTA5,
    confidence_regularizer,
    prototype_consistency_loss,
    prototype_weights,
    rectify_pseudo_labels,
    symmetric_cross_entropy,
)
from crossregion.methods.proda_prototypes import PROTO_MOMENTUM, Prototypes, initial_prototypes
from crossregion.methods.proda_views import ProdaViewConfig, flip_where, target_views

# Module modes of the EMA teacher (ProdaConfig.ema_mode).
EMA_MODES = ("train", "eval")


@dataclass(frozen=True)
class ProdaConfig(ProdaViewConfig):
    """ProDA stage-1 constants; defaults are the official GTA5 stage-1 command's (docs/proda.md)."""

    name: str = "proda"
    # Weight of the source CE (official: 1, backward at once).
    source_weight: float = 1.0
    # Symmetric CE on the rectified pseudo labels: alpha * CE + beta * RCE (--rce).
    rce_alpha: float = RCE_ALPHA
    rce_beta: float = RCE_BETA
    # Confidence regulariser on the student's weak-view logits (--regular_w, --regular_type).
    regular_weight: float = REGULAR_WEIGHT_GTA5
    regular_type: str = "mrkld"
    # Structure learning: KL between the EMA's weak-view and the student's strong-view prototype
    # assignments (--proto_consistW).
    consistency_weight: float = PROTO_CONSIST_WEIGHT
    # Multiplies the negative prototype distances (--proto_temperature).
    proto_temperature: float = PROTO_TEMPERATURE
    # Prototype moving average: p <- (1 - m) p + m mean (--proto_momentum).
    proto_momentum: float = PROTO_MOMENTUM
    # Rectified labels whose renormalised top score is below this are ignored (--train_thred).
    rectify_threshold: float = RECTIFY_THRESHOLD
    # EMA teacher decay (hard-coded 0.999 in the official step).
    ema_decay: float = EMA_DECAY
    # The EMA teacher's module mode in the step: "train" as the official code, which never puts
    # it in eval mode (dropout on its prototype features, BatchNorm on batch statistics); "eval"
    # (dropout off, running statistics) is this project's earlier choice.
    ema_mode: str = "train"
    # Epochs of the initial-prototype pass over un-augmented target train (calc_prototype.py: 4).
    prototype_epochs: int = 4

    def __post_init__(self) -> None:
        check_non_negative(self, "source_weight", "rce_alpha", "rce_beta", "regular_weight", "consistency_weight")
        if self.rce_alpha + self.rce_beta <= 0:
            raise ValueError("method.rce_alpha + method.rce_beta must be positive (else no pseudo-label loss)")
        check_choice(self, "ema_mode", EMA_MODES)
        check_choice(self, "regular_type", REGULAR_TYPES)
        check_positive(self, "proto_temperature")
        check_fraction(self, "proto_momentum", "ema_decay", "rectify_threshold")
        self.check_views()
        if self.prototype_epochs < 1:
            raise ValueError(f"method.prototype_epochs must be >= 1, got {self.prototype_epochs}")


@register_method
class Proda(Method):
    """ProDA stage 1 (one source and one target batch per iteration); see the module docstring.

    Step: (1) source CE, backward; (2) no grad: warm-up softmax on the weak view (soft labels),
    EMA model on the full image (features, logits; cached for the prototype update); (3) student
    on the weak view: symmetric CE on the prototype-rectified labels + the regulariser; (4)
    student on the strong view: KL of prototype assignments against the EMA's weak-view ones;
    backward, one optimiser step. ``after_step``: prototypes, then the EMA teacher.
    """

    config_class = ProdaConfig
    required_batches = ("source", "target")
    needs_unaugmented_target = True

    def __init__(self, cfg: ProdaConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.prototypes: Prototypes | None = None
        # EMA outputs of the last step, for after_step's prototype update.
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None

    def check_config(self, cfg: ExperimentConfig) -> None:
        super().check_config(cfg)
        if cfg.model.head != "proda":
            raise ValueError("method proda needs ProDA's head (prototype features); set model.head: proda")

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        """Student, EMA teacher and frozen warm-up model, the latter two copies of ``segmenter``
        (the warm-up checkpoint), without gradients."""
        return {"segmenter": segmenter, "ema": frozen_copy(segmenter), "warmup": frozen_copy(segmenter)}

    def frozen_models(self) -> tuple[str, ...]:
        """The warm-up model in eval mode (the official soft labels are made offline by the model in
        eval mode); the EMA teacher too when ``ema_mode`` is ``eval``, else in train mode as the
        official code runs it."""
        return ("warmup",) if self.cfg.ema_mode == "train" else ("warmup", "ema")

    # ------------------------------------------------------------------------- prototypes
    def on_train_start(self, models: Mapping[str, nn.Module], datasets: Mapping[str, Dataset]) -> None:
        """Initial prototypes from the warm-up model over un-augmented target train (unless restored)."""
        if get_world_size() > 1:
            raise NotImplementedError(
                "method proda keeps one set of prototypes per process; multi-process training would "
                "let them diverge (the official code trains on one GPU); run it in one process"
            )
        warmup = unwrap(models["warmup"])
        device = next(warmup.parameters()).device
        if self.prototypes is not None:
            self.prototypes = self.prototypes.to(device)
            return
        loader = DataLoader(datasets[UNAUGMENTED_TARGET], batch_size=1, shuffle=False, num_workers=0)

        def images():
            for _ in range(self.cfg.prototype_epochs):
                for sample in loader:
                    yield sample["image"].to(device)

        channels = unwrap(models["segmenter"]).feature_channels
        self.prototypes = initial_prototypes(warmup, images(), num_classes=self.num_classes, channels=channels)
        self.prototypes = self.prototypes.to(device)

    def state_dict(self) -> dict[str, Any]:
        if self.prototypes is None:
            return {}
        return {"prototypes": {k: v.detach().cpu().clone() for k, v in self.prototypes.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        vectors = state["prototypes"]["vectors"]
        prototypes = Prototypes(self.num_classes, vectors.shape[1])
        prototypes.load_state_dict(state["prototypes"])
        self.prototypes = prototypes

    def _require_prototypes(self, like: torch.Tensor) -> Prototypes:
        if self.prototypes is None:
            raise RuntimeError("ProDA's prototypes are not initialised: on_train_start must run before the first step")
        if self.prototypes.vectors.device != like.device:
            self.prototypes = self.prototypes.to(like.device)
        return self.prototypes

    # ------------------------------------------------------------------------------- step
    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        segmenter, ema, warmup = models["segmenter"], models["ema"], models["warmup"]
        source, target = batches["source"], batches["target"]

        # (1) Source CE at full resolution; backward at once (frees the source graph).
        loss_src = segmentation_cross_entropy(segmenter(source["image"])["logits"], source["mask"])
        ctx.backward(cfg.source_weight * loss_src)

        full = target["image"]
        views = target_views(full, cfg, input_norm=unwrap(segmenter).input_norm)
        size = views.size

        # (2) Teachers, no grad, in the modes of frozen_models.
        with torch.no_grad():
            # Officially stored as the softmax of the stride-8 logits, resized as probabilities.
            soft_labels = resize_aligned(F.softmax(warmup(views.weak)["logits"].float(), dim=1), size)
            ema_out = ema(full)
            ema_features = resize_aligned(ema_out["features"].float(), size)
            ema_logits = resize_aligned(ema_out["logits"].float(), size)
            self._cached = (ema_features, ema_logits)
            prototypes = self._require_prototypes(ema_features)
            # full2weak: the EMA's features in the weak view's geometry (a flip here).
            weak_features = flip_where(ema_features, views.flip)
            weights = prototype_weights(weak_features, prototypes.vectors, temperature=cfg.proto_temperature)
            labels, _ = rectify_pseudo_labels(soft_labels, weights, threshold=cfg.rectify_threshold)
            teacher_distances = prototypes.distances(weak_features)

        # (3) Student on the weak view: symmetric CE on the rectified labels + regulariser.
        outputs_weak = segmenter(views.weak)
        logits_weak = resize_aligned(outputs_weak["logits"], size).float()
        loss_pseudo = symmetric_cross_entropy(logits_weak, labels, alpha=cfg.rce_alpha, beta=cfg.rce_beta)
        loss_reg = confidence_regularizer(logits_weak, cfg.regular_type)
        loss = loss_pseudo + cfg.regular_weight * loss_reg

        # (4) Structure learning: student's strong-view assignments vs the EMA's weak-view ones.
        if cfg.consistency_weight > 0:
            student_features = resize_aligned(segmenter(views.strong)["features"], size).float()
            student_distances = prototypes.distances(student_features)
            loss_consist = prototype_consistency_loss(
                student_distances, teacher_distances, temperature=cfg.proto_temperature, valid=views.label_valid
            )
            loss = loss + cfg.consistency_weight * loss_consist
        else:
            loss_consist = loss_pseudo.new_zeros(())
        ctx.backward(loss)
        ctx.step("segmenter")
        losses = {
            "loss/seg_src": loss_src,
            "loss/pseudo_tgt": loss_pseudo,
            "loss/reg_tgt": loss_reg,
            "loss/consist_tgt": loss_consist,
        }
        return {key: value.detach() for key, value in losses.items()}

    def after_step(self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]]) -> None:
        """Prototypes from this step's EMA full-image outputs (before its update), then the EMA."""
        if self._cached is None:
            raise RuntimeError("ProDA's after_step ran without a training_step before it")
        features, logits = self._cached
        self._cached = None
        self._require_prototypes(features).update_moving_average(features, logits, momentum=self.cfg.proto_momentum)
        update_ema_model(unwrap(models["ema"]), unwrap(models["segmenter"]), decay=self.cfg.ema_decay)
