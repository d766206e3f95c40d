"""What CRA, its Table-3 baselines and self-distillation share: the pseudo-labelled target data,
the trusted/untrusted region masks and the self-training loss.

- ``PseudoLabelMethod``: trains on target train joined with a pseudo-label store
  (``method.pseudo_label_store``), which it validates before training (class count, dataset,
  split, images). Its default step is one phase: a method's ``target_losses`` on the target
  batch, one SGD step of the segmenter. Self-distillation is one.
- ``RegionMethod``: adds the split into trusted and untrusted pixels (docs/spec.md §1.4–§1.5):
  ẽ = e · r[ŷ] with rare-class factors r from the store's class counts, trusted iff ẽ ≤ λ,
  untrusted iff ẽ > λ, padded pixels in neither region. CRA, pseudo-label-only and entropy
  minimisation are ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossregion.config.schema import ExperimentConfig, MethodConfig
from crossregion.data.labels import IGNORE_INDEX
from crossregion.engine.trainer import StepContext
from crossregion.methods.base import Method, check_choice, check_positive
from crossregion.methods.losses import masked_cross_entropy, resize_aligned
from crossregion.trust import rare_class_factors, region_masks, scaled_entropy, validate_threshold

# Values of RegionConfig.trusted_ce_weighting.
TRUSTED_CE_WEIGHTINGS = ("per_image", "pixel")

# Trust-rule fields of the region methods -> the key the store's manifest records them under.
STORE_RULE_KEYS = {"entropy_threshold": "threshold", "rare_share": "rare_share", "rare_factor": "rare_factor"}

STORE_HINT = "make one with `crossregion pseudo-label --checkpoint CKPT ... --output STORE`"


@dataclass(frozen=True)
class PseudoLabelConfig(MethodConfig):
    """Fields of every method that trains on a pseudo-label store."""

    name: str
    # The store folder written by `crossregion pseudo-label` on data.target (required).
    pseudo_label_store: str | None = None


@dataclass(frozen=True)
class RegionConfig(PseudoLabelConfig):
    """Fields of the methods that split target pixels into trusted and untrusted regions."""

    name: str
    # The trust rule. Each is taken from the pseudo-label store, which records the rule it was
    # made with (`crossregion pseudo-label --threshold/--rare-share/--rare-factor`, the pipeline's
    # pseudo_label section); null = the store's, a value = a check that refuses another store.
    # λ: trusted iff scaled entropy <= λ (official 0.01; the paper's rule log2/(K logK) = 0.0124).
    entropy_threshold: float | None = None
    # A class is rare if its share of the store's pseudo-label pixels is below this (official 1%).
    rare_share: float | None = None
    # Entropy factor of rare-class pixels (official 0.5, the paper's "1/2"; 1 turns scaling off).
    rare_factor: float | None = None
    # T dividing the logits of the self-training CE: the official code uses 1.8, the paper none (1).
    seg_temperature: float = 1.8
    # BatchNorm momentum of the segmenter; None keeps PyTorch's 0.1. The official CRA step
    # forwards the same batch twice, so its running statistics move twice per iteration with
    # momentum 0.1, i.e. once with 1 - (1 - 0.1)^2 = 0.19: cra.yaml sets 0.19 to reproduce them
    # with our single forward pass (and the Table-3 baselines share it, so BN behaves alike).
    bn_momentum: float | None = None
    # How the self-training CE averages over the batch (docs/spec.md §1.5, "Per-process normalisation"):
    # "per_image" = the mean over the batch's images of each image's mean over its trusted
    # pixels, what the official run computes (4 GPUs x 1 crop, CE mean on each GPU, DDP averages
    # the gradients); "pixel" = one mean over all trusted pixels of the batch, what the official
    # code computes on a single GPU holding the whole batch. The two differ when the images have
    # different numbers of trusted pixels: "pixel" weighs an image by its trusted pixel count.
    # The untrusted-region terms (CRA's adversarial and D losses, entropy_min's entropy) are a
    # masked sum over all pixels of the batch in both the official code and ours, which is the
    # same with one crop per GPU and DDP averaging (every crop has the same size), so they have
    # no such field.
    trusted_ce_weighting: str = "per_image"
    # True: BatchNorm normalises with the starting (CDA) model's running statistics and keeps
    # them (its layers stay in eval mode while training; the affine parameters still train).
    # False (official): statistics move with the target crops at bn_momentum.
    freeze_bn_statistics: bool = False
    # Every this many iterations, log diag/grad_ratio = ||grad of the weighted region term|| /
    # ||grad of the trusted CE|| over the segmenter's parameters (how much the untrusted-region
    # term can steer the model). Costs two extra backward passes on those iterations; 0 = never.
    # Not measured under DDP (its gradient hooks fire on every backward pass).
    diagnostics_period: int = 0

    def __post_init__(self) -> None:
        if self.diagnostics_period < 0:
            raise ValueError(f"method.diagnostics_period must be >= 0 (0 = off), got {self.diagnostics_period}")
        check_choice(self, "trusted_ce_weighting", TRUSTED_CE_WEIGHTINGS)
        if self.bn_momentum is not None and not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"method.bn_momentum must be in (0, 1] or null, got {self.bn_momentum}")
        check_positive(self, "seg_temperature")
        if self.rare_share is not None and not 0.0 <= self.rare_share < 1.0:
            raise ValueError(f"method.rare_share must be in [0, 1), got {self.rare_share}")
        if self.rare_factor is not None and not 0.0 < self.rare_factor <= 1.0:
            raise ValueError(f"method.rare_factor must be in (0, 1], got {self.rare_factor}")


def trusted_cross_entropy(
    logits: torch.Tensor,
    pseudo_label: torch.Tensor,
    trusted: torch.Tensor,
    temperature: float = 1.0,
    weighting: str = "pixel",
) -> torch.Tensor:
    """Cross-entropy of ``logits / temperature`` against the pseudo label on trusted pixels.

    ``weighting="pixel"``: the mean over all trusted pixels of the batch. ``"per_image"``: each
    image's mean over its own trusted pixels, then the mean over the N images, which is what the
    official run optimises (one crop per GPU, CE mean there, DDP averaging the gradients of the
    4 processes; docs/spec.md §1.5).

    No trusted pixel: the official code takes a mean over no elements, i.e. NaN (not guarded,
    docs/spec.md §1.5); with one crop per GPU that NaN loss gives NaN gradients on that GPU, and DDP's
    all-reduce spreads them to every process, so the whole model turns NaN. Here such an image
    (``per_image``) or batch (``pixel``) contributes 0: a sum over no pixels divided by at least
    1. In ``per_image`` mode the divisor stays N, i.e. that image is counted as a process whose
    gradient is zero; the other images keep their weight 1/N.

    Args:
        logits: segmentation logits at the pseudo label's resolution.
        pseudo_label: train IDs, 255 = none.
        trusted: the pixels that count.
        temperature: T (official CRA: 1.8).
        weighting: ``"pixel"`` or ``"per_image"`` (see above).

    Returns:
        A scalar (float32 under autocast, which runs cross-entropy in float32).

    Shape:
        - logits: (N, K, H, W)
        - pseudo_label: (N, H, W) int64
        - trusted: (N, H, W) bool
    """
    targets = torch.where(trusted, pseudo_label, torch.full_like(pseudo_label, IGNORE_INDEX))
    if weighting == "pixel":
        return masked_cross_entropy(logits / temperature, targets)
    if weighting == "per_image":
        # Ignored pixels get loss 0 with reduction="none".
        pixel_losses = F.cross_entropy(logits / temperature, targets, ignore_index=IGNORE_INDEX, reduction="none")
        image_sums = pixel_losses.flatten(1).sum(dim=1)
        image_counts = (targets != IGNORE_INDEX).flatten(1).sum(dim=1).clamp(min=1)
        return (image_sums / image_counts).mean()
    raise ValueError(f"weighting must be one of {TRUSTED_CE_WEIGHTINGS}, got {weighting!r}")


def gradient_norm_ratio(numerator: torch.Tensor, denominator: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """||d numerator / d θ|| / ||d denominator / d θ|| over ``model``'s trainable parameters θ.

    Both graphs are kept (``retain_graph``) and no ``.grad`` is touched, so the step's own
    backward pass runs afterwards as usual. A denominator with no gradient gives 0.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]

    def norm(loss: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        squares = [g.float().pow(2).sum() for g in grads if g is not None]
        return torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(())

    denominator_norm = norm(denominator)
    return torch.where(denominator_norm > 0, norm(numerator) / denominator_norm.clamp(min=1e-30), 0.0)


def hold_batchnorm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm layer of ``model`` in eval mode: it normalises with its running
    statistics and does not update them; the rest of the model keeps its mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class PseudoLabelMethod(Method):
    """A method trained on target train plus a pseudo-label store (``method.pseudo_label_store``).

    Opens the store when built, so a missing or foreign store fails before anything else.

    Raises:
        ValueError: ``pseudo_label_store`` is unset, or the store was made by a model with
            another class count.
        FileNotFoundError: no store at that path.
    """

    required_batches = ("target",)

    def __init__(self, cfg: PseudoLabelConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        from crossregion.data.pseudo_labels import PseudoLabelStore

        if cfg.pseudo_label_store is None:
            raise ValueError(f"method {cfg.name!r} needs method.pseudo_label_store=STORE; {STORE_HINT}")
        self.store = self.pseudo_label_store = PseudoLabelStore(cfg.pseudo_label_store)
        self.store.check_compatible(num_classes=num_classes)

    def check_config(self, cfg: ExperimentConfig) -> None:
        """The store must be of ``data.target``'s dataset and split (its images are checked when loaded)."""
        super().check_config(cfg)
        self.store.check_compatible(dataset=cfg.data.target.name, split=cfg.data.target.split)

    def training_step(
        self, models: Mapping[str, nn.Module], batches: Mapping[str, dict[str, Any]], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        """One phase: backpropagate ``target_losses``' total, one SGD step of the segmenter.

        Returns:
            ``target_losses``' named terms, detached, and ``step_diagnostics``.
        """
        segmenter = models["segmenter"]
        self.prepare_segmenter(segmenter)
        total, terms = self.target_losses(segmenter, batches["target"])
        logged = {name: value.detach() for name, value in terms.items()}
        logged.update(self.step_diagnostics(terms, segmenter, ctx))
        ctx.backward(total)
        ctx.step("segmenter")
        return logged

    def prepare_segmenter(self, segmenter: nn.Module) -> None:
        """Called at the start of every step, before the forward pass; nothing by default."""

    def step_diagnostics(
        self, terms: Mapping[str, torch.Tensor], segmenter: nn.Module, ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        """Extra values to log, computed before the backward pass; none by default."""
        return {}

    def target_losses(
        self, segmenter: nn.Module, target: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise on a target batch and its named terms (``loss/<what>``) to log."""
        raise NotImplementedError(f"{type(self).__name__} must implement target_losses (or training_step)")


class RegionMethod(PseudoLabelMethod):
    """A pseudo-label method that splits target pixels into trusted and untrusted regions.

    Raises:
        ValueError: λ is outside (0, 1/K], besides ``PseudoLabelMethod``'s errors.
    """

    def __init__(self, cfg: RegionConfig, *, num_classes: int) -> None:
        super().__init__(cfg, num_classes=num_classes)
        self.entropy_threshold, rare_share, rare_factor = (
            self._store_rule(key, getattr(cfg, key)) for key in ("entropy_threshold", "rare_share", "rare_factor")
        )
        validate_threshold(self.entropy_threshold, num_classes)
        # Counts of the CDA model's argmax over all target-train pixels (docs/spec.md §1.4).
        self.class_factors = rare_class_factors(self.store.class_pixel_counts, share=rare_share, factor=rare_factor)

    def _store_rule(self, key: str, configured: float | None) -> float:
        """The store's value of a trust-rule field; a configured value must equal it."""
        store_key = STORE_RULE_KEYS[key]
        recorded = float(self.store.manifest[store_key])
        if configured is not None and configured != recorded:
            raise ValueError(
                f"method.{key}={configured} differs from the pseudo-label store's {store_key}={recorded} "
                f"({self.store.path}): the store's statistics and the training split would disagree. Set "
                f"method.{key}=null to use the store's, or make a store with "
                f"--{store_key.replace('_', '-')} {configured}"
            )
        return recorded

    def build_models(self, segmenter: nn.Module) -> dict[str, nn.Module]:
        if self.cfg.bn_momentum is not None:
            for module in segmenter.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = self.cfg.bn_momentum
        return super().build_models(segmenter)

    def step_diagnostics(
        self, terms: Mapping[str, torch.Tensor], segmenter: nn.Module, ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        """Every ``diagnostics_period`` iterations: ``diag/grad_ratio``, the region term's gradient
        norm over the trusted CE's (docs/benchmarks.md, the self-training diagnosis)."""
        region = self.weighted_region_loss(terms)
        if region is None or not self.diagnostics_due(ctx):
            return {}
        return {"diag/grad_ratio": gradient_norm_ratio(region, terms["loss/seg_trusted"], segmenter)}

    def target_losses(
        self, segmenter: nn.Module, target: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The trusted-region CE of the target batch plus ``weighted_region_loss`` of the
        ``untrusted_terms``; the logits are upsampled to the pseudo labels first."""
        trusted, untrusted = self.region_masks(target)
        pseudo_label = target["pseudo_mask"]
        logits = resize_aligned(segmenter(target["image"])["logits"], tuple(pseudo_label.shape[-2:]))
        loss_seg = trusted_cross_entropy(
            logits, pseudo_label, trusted, self.cfg.seg_temperature, self.cfg.trusted_ce_weighting
        )
        terms = {"loss/seg_trusted": loss_seg, **self.untrusted_terms(logits, untrusted)}
        region = self.weighted_region_loss(terms)
        return (loss_seg if region is None else loss_seg + region), terms

    def untrusted_terms(self, logits: torch.Tensor, untrusted: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named, unweighted loss terms on the untrusted region (``loss/<what>``); none by default.

        Shape:
            - logits: (N, K, H, W), at the pseudo labels' resolution
            - untrusted: (N, H, W) bool
        """
        return {}

    def weighted_region_loss(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The untrusted-region part of ``target_losses``' total, as weighted there; None = none."""
        return None

    def prepare_segmenter(self, segmenter: nn.Module) -> None:
        """Holds BatchNorm statistics if configured (the trainer puts every model back in train
        mode after an evaluation)."""
        if self.cfg.freeze_bn_statistics:
            hold_batchnorm_statistics(segmenter)

    def diagnostics_due(self, ctx: StepContext) -> bool:
        """Whether this iteration logs the (costly) gradient-ratio diagnostic."""
        from crossregion.dist import get_world_size

        period = self.cfg.diagnostics_period
        return period > 0 and (ctx.iteration + 1) % period == 0 and get_world_size() == 1

    def region_masks(self, target: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(trusted, untrusted)`` bool masks of a target batch, on its device.

        Shape:
            - target["entropy"], target["pseudo_mask"]: (N, H, W)
            - outputs: (N, H, W) bool
        """
        entropy = target["entropy"]
        if self.class_factors.device != entropy.device:
            # K floats, moved once: later steps find them on the device.
            self.class_factors = self.class_factors.to(entropy.device)
        scaled = scaled_entropy(entropy, target["pseudo_mask"], self.class_factors)
        return region_masks(scaled, self.entropy_threshold)
