"""Pure functions of Cross-Region Adaptation: entropy, region masks, soft domain labels, losses.

Semantics follow the official CRA code (docs/cra.md lists the constants and the differences);
where the paper's text differs, the docstring says so. Everything here is a tensor function
without state, so CRA, its Table-3 baselines and the CDA methods (FADA) share one definition.
Masks are ``bool`` tensors on the input's device; nothing here syncs with the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Entropy value of pixels that carry no entropy (crop padding); neither trusted nor untrusted.
ENTROPY_IGNORE_VALUE = -1.0

# Index of the two halves of a fine-grained discriminator's 2K channels: [0, K) is the
# source (trusted) domain, [K, 2K) the target (untrusted) domain.
SOURCE_DOMAIN = 0
TARGET_DOMAIN = 1


def normalized_entropy(probs: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Per-pixel entropy divided by ``K ln K``: e = H / (K ln K), in [0, 1/K] (paper eq. 2).

    The official code writes it as the class mean of ``-p log2 p / log2 K``, which is the same
    quantity. ``p = 0`` contributes exactly 0 (``xlogy``), so one-hot inputs give 0, not NaN.

    Args:
        probs: class probabilities (softmax output), summing to 1 along ``dim``.
        dim: the class dimension.

    Returns:
        The normalised entropy, ``probs``' shape without ``dim``, same dtype.

    Shape:
        - probs: (N, K, H, W) or (K, H, W)
        - output: (N, H, W) or (H, W)
    """
    num_classes = probs.shape[dim]
    if num_classes < 2:
        raise ValueError(f"normalized_entropy needs at least 2 classes, got {num_classes}")
    entropy_nats = -torch.special.xlogy(probs, probs).sum(dim=dim)
    return entropy_nats / (num_classes * math.log(num_classes))


def default_threshold(num_classes: int) -> float:
    """The paper's rule for λ: the normalised entropy of a 50/50 split between two classes.

    ``log 2 / (K log K)``: 0.0123899 for K=19 (the paper rounds it to 0.01), 0.015625 for K=16.
    """
    if num_classes < 2:
        raise ValueError(f"default_threshold needs at least 2 classes, got {num_classes}")
    return math.log(2) / (num_classes * math.log(num_classes))


def validate_threshold(threshold: float, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``0 < threshold <= 1/K``, the range of the normalised entropy.

    A threshold of 1/K or more trusts every pixel; 0 or less trusts none.
    """
    upper = 1.0 / num_classes
    if not 0.0 < threshold <= upper:
        raise ValueError(
            f"entropy threshold λ={threshold} is outside (0, 1/K] = (0, {upper:.6g}] for "
            f"K={num_classes} classes; the paper uses 0.01 (default_threshold gives "
            f"{default_threshold(num_classes):.6g})"
        )


def rare_class_factors(
    class_pixel_counts: Sequence[int] | torch.Tensor, share: float = 0.01, factor: float = 0.5
) -> torch.Tensor:
    """Entropy multiplier per class: ``factor`` for rare classes, 1 for the others.

    A class is rare if its share of all pseudo-labelled pixels is below ``share`` (official:
    counts of the CDA model's argmax over all target-train pixels, share 1%, factor 0.5 in
    cra.yaml). Multiplying the entropy by 0.5 doubles the effective threshold of rare classes.

    Args:
        class_pixel_counts: pixels per class, length K.
        share: a class below this fraction of all pixels is rare.
        factor: the multiplier of rare classes, in (0, 1].

    Returns:
        float32 factors on the counts' device (CPU for a sequence).

    Shape:
        - class_pixel_counts: (K,)
        - output: (K,)
    """
    counts = torch.as_tensor(class_pixel_counts, dtype=torch.float64)
    if counts.ndim != 1 or bool((counts < 0).any()):
        raise ValueError(f"class_pixel_counts must be K non-negative counts, got {counts.tolist()}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("class_pixel_counts are all zero: no pixel was pseudo-labelled")
    if not 0.0 <= share < 1.0:
        raise ValueError(f"rare-class share must be in [0, 1), got {share}")
    if not 0.0 < factor <= 1.0:
        raise ValueError(f"rare-class factor must be in (0, 1], got {factor}")
    is_rare = counts / total < share
    factors = torch.where(is_rare, torch.tensor(factor, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    return factors.to(torch.float32)


def scaled_entropy(
    entropy: torch.Tensor,
    pseudo_label: torch.Tensor,
    factors: torch.Tensor,
    ignore_value: float = ENTROPY_IGNORE_VALUE,
) -> torch.Tensor:
    """ẽ = e · r[ŷ]: each pixel's entropy times the factor of its pseudo-label class.

    Pixels whose label is not a class (255) keep their entropy; pixels holding
    ``ignore_value`` keep it, so scaling never turns padding into a trusted pixel.

    Args:
        entropy: normalised entropy (``ignore_value`` where padded).
        pseudo_label: integer train IDs, 255 = none.
        factors: per-class factors from ``rare_class_factors``, on ``entropy``'s device.
        ignore_value: the entropy of padded pixels.

    Shape:
        - entropy: (N, H, W) or (H, W)
        - pseudo_label: same as entropy
        - factors: (K,)
        - output: same as entropy
    """
    if entropy.shape != pseudo_label.shape:
        raise ValueError(f"entropy {tuple(entropy.shape)} and pseudo label {tuple(pseudo_label.shape)} differ in shape")
    # A 256-entry table (factor 1 beyond K) is one gather for every label, 255 included.
    table = torch.ones(256, dtype=entropy.dtype, device=entropy.device)
    table[: factors.numel()] = factors.to(entropy.dtype)
    scaled = entropy * table[pseudo_label.long()]
    return torch.where(entropy == ignore_value, entropy, scaled)


def region_masks(
    scaled_entropy: torch.Tensor, threshold: float, ignore_value: float = ENTROPY_IGNORE_VALUE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split pixels into the trusted and untrusted regions (spec §1.5).

    Trusted iff ẽ ≤ λ and ẽ is not ``ignore_value`` (ties are trusted, as in the official code;
    the paper writes e < λ); untrusted iff ẽ > λ. Padded pixels are in neither region.

    Args:
        scaled_entropy: ẽ from ``scaled_entropy``.
        threshold: λ.
        ignore_value: the entropy of padded pixels.

    Returns:
        ``(trusted, untrusted)`` boolean masks.

    Shape:
        - scaled_entropy: (N, H, W) or (H, W)
        - outputs: same as scaled_entropy
    """
    trusted = (scaled_entropy <= threshold) & (scaled_entropy != ignore_value)
    untrusted = scaled_entropy > threshold
    return trusted, untrusted


def soft_domain_labels(logits: torch.Tensor, temperature: float = 1.8, clip: float = 0.9) -> torch.Tensor:
    """The class part ``a`` of the domain labels: ``min(softmax(z / T), clip)``, detached.

    Not renormalised after clipping, as in the official code: a confident 0.99 becomes 0.9 and
    the vector sums to less than 1. Detached because these are targets: D's loss must not push
    gradients into the segmenter through them.

    Args:
        logits: segmentation logits (already upsampled to the mask resolution).
        temperature: T (1.8 in the official code).
        clip: upper bound of each entry (0.9 in the official code).

    Shape:
        - logits: (N, K, H, W)
        - output: (N, K, H, W)
    """
    return F.softmax(logits.detach() / temperature, dim=1).clamp(max=clip)


def domain_targets(soft_labels: torch.Tensor, domain: int) -> torch.Tensor:
    """Soft targets of the fine-grained discriminator: ``[a; 0]`` for the source domain, ``[0; a]`` for the target.

    Args:
        soft_labels: ``a`` from ``soft_domain_labels``.
        domain: ``SOURCE_DOMAIN`` (trusted) or ``TARGET_DOMAIN`` (untrusted).

    Shape:
        - soft_labels: (N, K, H, W)
        - output: (N, 2K, H, W)
    """
    zeros = torch.zeros_like(soft_labels)
    if domain == SOURCE_DOMAIN:
        return torch.cat([soft_labels, zeros], dim=1)
    if domain == TARGET_DOMAIN:
        return torch.cat([zeros, soft_labels], dim=1)
    raise ValueError(f"domain must be SOURCE_DOMAIN ({SOURCE_DOMAIN}) or TARGET_DOMAIN ({TARGET_DOMAIN}), got {domain}")


def soft_label_cross_entropy(
    disc_logits: torch.Tensor,
    soft_targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    normalize: str = "all",
) -> torch.Tensor:
    """Cross-entropy against soft targets: per pixel ``-Σ_j t_j log_softmax(d)_j`` (spec §2.2).

    Args:
        disc_logits: discriminator logits at the targets' resolution.
        soft_targets: per-pixel target weights, need not sum to 1.
        mask: pixels that count; None = all.
        normalize: ``"all"`` divides the masked sum by all N·H·W pixels (the official
            FADA/CRA code); ``"mask"`` divides by the number of masked pixels (at least 1, so
            an empty mask gives 0, not NaN).

    Returns:
        A scalar loss in ``disc_logits``' dtype.

    Shape:
        - disc_logits: (N, C, H, W)
        - soft_targets: (N, C, H, W)
        - mask: (N, H, W), bool
    """
    if disc_logits.shape != soft_targets.shape:
        raise ValueError(f"disc_logits {tuple(disc_logits.shape)} and soft_targets {tuple(soft_targets.shape)} differ in shape")
    pixel_losses = -(soft_targets * F.log_softmax(disc_logits, dim=1)).sum(dim=1)
    if mask is not None:
        if mask.shape != pixel_losses.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match the logits' N×H×W {tuple(pixel_losses.shape)}")
        pixel_losses = pixel_losses * mask
    if normalize == "all":
        return pixel_losses.sum() / pixel_losses.numel()
    if normalize == "mask":
        count = pixel_losses.numel() if mask is None else mask.sum().clamp(min=1)
        return pixel_losses.sum() / count
    raise ValueError(f"normalize must be 'all' or 'mask', got {normalize!r}")
