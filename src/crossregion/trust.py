"""The entropy / trust rule of CRA, in one place: training, the pseudo-label store and reports use it.

A pixel's normalised entropy e = H / (K ln K) lies in [0, 1/K]. Its scaled entropy ẽ = e · r[ŷ]
multiplies e by the factor of its pseudo-label class (r = 0.5 for rare classes, 1 otherwise);
the pixel is trusted iff ẽ ≤ λ and untrusted iff ẽ > λ (docs/spec.md §1.3–§1.5). Tensor
functions without state; masks are ``bool`` on the input's device and nothing syncs with the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# The official CRA rule (docs/spec.md §1.4): λ, the share below which a class is rare, and the
# entropy factor of rare classes. Stores record the rule they were made with; methods that
# train on a store take it from there.
OFFICIAL_THRESHOLD = 0.01
OFFICIAL_RARE_SHARE = 0.01
OFFICIAL_RARE_FACTOR = 0.5

# Entropy value of pixels that carry no entropy (crop padding); neither trusted nor untrusted.
ENTROPY_IGNORE_VALUE = -1.0


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
    """Split pixels into the trusted and untrusted regions (docs/spec.md §1.5).

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


def trusted_at(entropy: torch.Tensor, factor: float, threshold: float) -> torch.Tensor:
    """Trusted pixels of an entropy map whose pixels all carry the class factor ``factor``.

    The same rule as ``region_masks(scaled_entropy(...))`` for one factor; the pseudo-label store
    counts trusted pixels at factor 1 and at the rare factor before it knows which classes are rare.
    """
    return region_masks(entropy * factor, threshold)[0]
