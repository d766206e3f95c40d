"""ProDA stage 1: prototypical pseudo-label denoising and target structure learning.

*Prototypical Pseudo Label Denoising and Target Structure Learning for Domain Adaptive Semantic
Segmentation*, Zhang et al., CVPR 2021 (official code: github.com/microsoft/ProDA,
``CustomModel.step``). Runs after a warm-up (CDA) model with ProDA's head (``model.head:
proda``); docs/proda.md describes the official step, the constants and where this one differs.

Models: ``segmenter`` (the student, trained by SGD/Adam), ``ema`` (the momentum teacher, a copy,
no optimiser, ``e <- d e + (1 - d) s`` in ``after_step``, BatchNorm buffers copied) and
``warmup`` (a frozen copy of the starting model that supplies the soft pseudo labels online; the
official code stores its softmax once before stage 1). Per-run state: the class prototypes
(``Prototypes``), computed in ``on_train_start`` from the warm-up model over un-augmented target
train (``calc_prototype.py``) unless restored by ``--resume``, and moved once per iteration in
``after_step`` from the EMA model's full-image features.

Views, built inside the step with tensor ops (official: RandAugment-style weak/strong pipelines
on the CPU):

- full: the target batch as the loader gives it (its own flip included);
- weak: full, horizontally flipped per image with probability ``weak_flip_prob`` (official: random
  scale, crop and flip of the full image);
- strong: weak, with per-image brightness and contrast jitter, Gaussian noise and one cutout box
  per image (official: RandAugment's photometric *and* geometric operations plus cutout). Having
  no geometric warp here, the teacher's weak-view distances map one-to-one into the strong view;
  the cutout box is invalid for the structure-learning KL, as the official padding/cutout is.

All target losses and prototype work happen at ``1 / label_downsample`` of the input resolution
(bilinear from the stride-8 outputs, as the official 1/4); the source CE at full resolution.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from crossregion.config.schema import ExperimentConfig, MethodConfig
from crossregion.data.transforms import INPUT_NORM_STATS
from crossregion.dist import get_world_size, unwrap
from crossregion.engine.trainer import StepContext
from crossregion.methods.base import Method, register_method
from crossregion.methods.losses import segmentation_cross_entropy, upsample_logits
from crossregion.methods.proda_losses import (
    EMA_DECAY,
    PROTO_CONSIST_WEIGHT,
    PROTO_MOMENTUM,
    PROTO_TEMPERATURE,
    RCE_ALPHA,
    RCE_BETA,
    RECTIFY_THRESHOLD,
    REGULAR_TYPES,
    REGULAR_WEIGHT_GTA5,
    Prototypes,
    confidence_regularizer,
    initial_prototypes,
    prototype_consistency_loss,
    prototype_weights,
    rectify_pseudo_labels,
    symmetric_cross_entropy,
    update_ema_model,
)

# Module modes of the EMA teacher (ProdaConfig.ema_mode).
EMA_MODES = ("train", "eval")


@dataclass(frozen=True)
class ProdaViewConfig(MethodConfig):
    """What ProDA's stages share: the loss resolution and the weak and strong views."""

    name: str
    # Target losses at 1/label_downsample of the input resolution (official: 4).
    label_downsample: int = 4
    # Weak view: per-image horizontal flip probability.
    weak_flip_prob: float = 0.5
    # Strong view: brightness offset ~ U(-b, b) and contrast factor ~ U(1 - c, 1 + c) per image (on
    # normalised images), Gaussian noise std, one cutout box of this fraction of each side.
    strong_brightness: float = 0.4
    strong_contrast: float = 0.4
    strong_noise_std: float = 0.1
    strong_cutout: float = 0.3

    def check_views(self) -> None:
        """Raise ``ValueError`` naming the field when a view setting is out of range."""
        for key in ("strong_brightness", "strong_noise_std"):
            if getattr(self, key) < 0:
                raise ValueError(f"method.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.weak_flip_prob <= 1.0:
            raise ValueError(f"method.weak_flip_prob must be in [0, 1], got {self.weak_flip_prob}")
        if not 0.0 <= self.strong_contrast < 1.0:
            raise ValueError(f"method.strong_contrast must be in [0, 1), got {self.strong_contrast}")
        if not 0.0 <= self.strong_cutout < 1.0:
            raise ValueError(f"method.strong_cutout must be in [0, 1), got {self.strong_cutout}")
        if self.label_downsample < 1:
            raise ValueError(f"method.label_downsample must be >= 1, got {self.label_downsample}")


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
        for key in (
            "source_weight",
            "rce_alpha",
            "rce_beta",
            "regular_weight",
            "consistency_weight",
        ):
            if getattr(self, key) < 0:
                raise ValueError(f"method.{key} must be >= 0, got {getattr(self, key)}")
        if self.rce_alpha + self.rce_beta <= 0:
            raise ValueError("method.rce_alpha + method.rce_beta must be positive (else no pseudo-label loss)")
        if self.ema_mode not in EMA_MODES:
            raise ValueError(f"method.ema_mode must be one of {EMA_MODES}, got {self.ema_mode!r}")
        if self.regular_type not in REGULAR_TYPES:
            raise ValueError(f"method.regular_type must be one of {REGULAR_TYPES}, got {self.regular_type!r}")
        if self.proto_temperature <= 0:
            raise ValueError(f"method.proto_temperature must be positive, got {self.proto_temperature}")
        for key in ("proto_momentum", "ema_decay", "rectify_threshold"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"method.{key} must be in [0, 1], got {getattr(self, key)}")
        self.check_views()
        if self.prototype_epochs < 1:
            raise ValueError(f"method.prototype_epochs must be >= 1, got {self.prototype_epochs}")


def resize_aligned(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, ``align_corners=True`` (the official ``F.interpolate`` calls)."""
    if tuple(tensor.shape[-2:]) == size:
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=True)


def flip_where(tensor: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Horizontally flip the images of ``tensor`` (N, ..., W) where ``flip`` (N,) bool is set."""
    shape = (-1,) + (1,) * (tensor.ndim - 1)
    return torch.where(flip.view(shape), tensor.flip(-1), tensor)


def strong_view(
    images: torch.Tensor,
    cfg: ProdaViewConfig,
    generator: torch.Generator | None = None,
    *,
    input_norm: str = "imagenet",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The strong view of (normalised) images and its valid-pixel mask (False in the cutout box).

    Per image: contrast factor around the image mean, brightness offset, Gaussian noise, and one
    cutout box (set to 0, the normalised mean) of ``strong_cutout`` times each side. The
    constants are in ImageNet-normalised units: images of another ``input_norm`` (ProDA's RGB/255)
    are mapped there, changed, and mapped back, so a preset's view does not depend on it.

    Shape:
        - images: (N, 3, H, W)
        - outputs: (N, 3, H, W), (N, H, W) bool
    """
    if input_norm != "imagenet":
        own_mean, own_std = (
            torch.tensor(v, device=images.device, dtype=images.dtype).view(3, 1, 1)
            for v in INPUT_NORM_STATS[input_norm]
        )
        imagenet_mean, imagenet_std = (
            torch.tensor(v, device=images.device, dtype=images.dtype).view(3, 1, 1)
            for v in INPUT_NORM_STATS["imagenet"]
        )
        rgb = images * own_std + own_mean
        out, valid = strong_view((rgb - imagenet_mean) / imagenet_std, cfg, generator)
        return ((out * imagenet_std + imagenet_mean) - own_mean) / own_std, valid
    n, _, h, w = images.shape
    device, dtype = images.device, images.dtype

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)).to(device, dtype)

    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = (images - mean) * uniform(1 - cfg.strong_contrast, 1 + cfg.strong_contrast) + mean
    out = out + uniform(-cfg.strong_brightness, cfg.strong_brightness)
    if cfg.strong_noise_std > 0:
        out = out + cfg.strong_noise_std * torch.randn(images.shape, generator=generator).to(device, dtype)
    valid = torch.ones(n, h, w, dtype=torch.bool, device=device)
    box_h, box_w = int(round(cfg.strong_cutout * h)), int(round(cfg.strong_cutout * w))
    if box_h > 0 and box_w > 0:
        tops = torch.randint(0, h - box_h + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, w - box_w + 1, (n,), generator=generator).tolist()
        for index, (top, left) in enumerate(zip(tops, lefts)):
            valid[index, top : top + box_h, left : left + box_w] = False
        out = out * valid[:, None].to(dtype)
    return out, valid


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

    def __init__(self, cfg: ProdaConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.prototypes: Prototypes | None = None
        self._target_spec = None
        # EMA outputs of the last step, for after_step's prototype update.
        self._cached: tuple[torch.Tensor, torch.Tensor] | None = None

    def check_config(self, cfg: ExperimentConfig) -> None:
        super().check_config(cfg)
        if cfg.model.head != "proda":
            raise ValueError("method proda needs ProDA's head (prototype features); set model.head: proda")
        self._target_spec = cfg.data.target

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        """Student, EMA teacher and frozen warm-up model, the latter two copies of ``segmenter``
        (the warm-up checkpoint), without gradients."""
        teachers = {}
        for name in ("ema", "warmup"):
            teacher = copy.deepcopy(segmenter)
            for parameter in teacher.parameters():
                parameter.requires_grad_(False)
            teachers[name] = teacher
        return {"segmenter": segmenter, **teachers}

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
        dataset = datasets["target"]
        if self._target_spec is not None:
            from crossregion.data.datasets import build_dataset
            from crossregion.data.transforms import eval_transform

            spec = self._target_spec
            dataset = build_dataset(
                spec.name,
                spec.root,
                spec.split,
                num_classes=self.num_classes,
                transform=eval_transform(size=spec.resize, input_norm=warmup.input_norm),
                labelled=False,
            )
        loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)

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
        outputs_src = segmenter(source["image"])
        logits_src = upsample_logits(outputs_src["logits"], tuple(source["mask"].shape[-2:]))
        loss_src = segmentation_cross_entropy(logits_src, source["mask"])
        ctx.backward(cfg.source_weight * loss_src)

        full = target["image"]
        n, _, h, w = full.shape
        size = (max(1, h // cfg.label_downsample), max(1, w // cfg.label_downsample))
        flip = torch.rand(n) < cfg.weak_flip_prob
        weak = flip_where(full, flip.to(full.device))
        strong, strong_valid = strong_view(weak, cfg, input_norm=unwrap(segmenter).input_norm)
        flip = flip.to(full.device)

        # (2) Teachers, no grad. The warm-up model in eval mode (the official soft labels are made
        # offline by the model in eval mode); the EMA in the configured mode (the trainer put
        # every model in train mode, the official one).
        with torch.no_grad():
            warmup.eval()
            ema.train(cfg.ema_mode == "train")
            # Officially stored as the softmax of the stride-8 logits, resized as probabilities.
            soft_labels = resize_aligned(F.softmax(warmup(weak)["logits"].float(), dim=1), size)
            ema_out = ema(full)
            ema_features = resize_aligned(ema_out["features"].float(), size)
            ema_logits = resize_aligned(ema_out["logits"].float(), size)
            self._cached = (ema_features, ema_logits)
            prototypes = self._require_prototypes(ema_features)
            # full2weak: the EMA's features in the weak view's geometry (a flip here).
            weak_features = flip_where(ema_features, flip)
            weights = prototype_weights(weak_features, prototypes.vectors, temperature=cfg.proto_temperature)
            labels, _ = rectify_pseudo_labels(soft_labels, weights, threshold=cfg.rectify_threshold)
            teacher_distances = prototypes.distances(weak_features)
            valid = F.interpolate(strong_valid[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5

        # (3) Student on the weak view: symmetric CE on the rectified labels + regulariser.
        outputs_weak = segmenter(weak)
        logits_weak = resize_aligned(outputs_weak["logits"], size).float()
        loss_pseudo = symmetric_cross_entropy(logits_weak, labels, alpha=cfg.rce_alpha, beta=cfg.rce_beta)
        loss_reg = confidence_regularizer(logits_weak, cfg.regular_type)
        loss = loss_pseudo + cfg.regular_weight * loss_reg

        # (4) Structure learning: student's strong-view assignments vs the EMA's weak-view ones.
        if cfg.consistency_weight > 0:
            student_features = resize_aligned(segmenter(strong)["features"], size).float()
            student_distances = prototypes.distances(student_features)
            loss_consist = prototype_consistency_loss(
                student_distances, teacher_distances, temperature=cfg.proto_temperature, valid=valid
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
