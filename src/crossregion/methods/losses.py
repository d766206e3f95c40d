"""What the methods share: the domain labels, the aligned resize and the common losses.

Pure tensor functions, no state, no host syncs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossregion.data.labels import IGNORE_INDEX

# The two domain labels of every discriminator: source 0, target 1. The output-space
# discriminators (AdaptSegNet, ADVENT, IAST's and ProDA's warm-ups) take them as BCE or LS-GAN
# targets, and the generator wants target maps scored as source; the fine-grained discriminators
# (FADA, CRA) index the halves of their 2K channels with them, CRA's trusted pixels playing source.
SOURCE_DOMAIN = 0
TARGET_DOMAIN = 1


def resize_aligned(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True``, as the official FADA/CRA/ADVENT/IAST/ProDA code;
    the one resize of logits, probabilities and features in the methods (up or down).

    Shape:
        - tensor: (N, C, h, w)
        - output: (N, C, H, W) with (H, W) = ``size``; ``tensor`` itself when already that size
    """
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=True)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy averaged over the labelled pixels; 0 (not NaN, as a plain mean) when none is.

    Shape:
        - logits: (N, K, H, W), at the labels' resolution
        - labels: (N, H, W) int64, ``ignore_index`` = not scored
        - output: scalar
    """
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


def segmentation_cross_entropy(
    logits: torch.Tensor, mask: torch.Tensor, *, temperature: float = 1.0, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy of logits upsampled to the label size, mean over non-ignored pixels.

    ``temperature`` divides the upsampled logits first: FADA's CDA stage uses T = 1.8 on the
    source CE too (docs/spec.md §2.3); source-only training uses 1 (docs/spec.md §2.4). A batch without any
    labelled pixel gives NaN, which the trainer reports.

    Shape:
        - logits: (N, K, h, w), any resolution (stride 8 from the segmenter)
        - mask: (N, H, W) int64 train IDs, ``ignore_index`` = not scored
        - output: scalar
    """
    upsampled = resize_aligned(logits, tuple(mask.shape[-2:]))
    if temperature != 1.0:
        upsampled = upsampled / temperature
    return F.cross_entropy(upsampled.float(), mask, ignore_index=ignore_index)
